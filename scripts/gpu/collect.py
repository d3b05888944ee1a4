"""On the GPU machine, after training: export each run's EMA weights as fp16 checkpoints, measure
FID/KID/near-copies with the project's protocol, the real-vs-real floor per resolution and the
steps table for chosen models, all under --out (scripts/gpu/README.md says where each file goes).

python3 scripts/gpu/collect.py --data DATA --fid-weights W --out DIR [--table NAME ...] [--ship NAME ...]
    [--table-configs bedrooms|cifar]

The steps table's sampler settings are a preset (``TABLES``); DDPM 1000 steps is measured only for
models whose schedule has 1000 discrete steps (``table_configs``). The headline setting (DDIM 50,
eta 0) also gets the near-copy share and FID / floor at equal N.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch

from diffusion_core.checkpoint import (export_checkpoint, load_checkpoint, read_description, shipping_description,
                                       update_description)
from diffusion_core.data import load_image_set
from diffusion_core.evaluation import cached_features, evaluate_model, real_vs_real_floor, record_result
from diffusion_core.fid import load_feature_extractor
from diffusion_core.files import atomic_write_bytes, write_json
from diffusion_core.samplers import SamplerConfig
from diffusion_core.schedules import ScheduleConfig

DDIM_GRID = [("ddim", s, eta) for eta in (0.0, 1.0) for s in (10, 20, 50, 100)]
HEADLINE = ("ddim", 50, 0.0)  # the protocol's setting: near copies, equal-N FID, the description's metrics


@dataclass(frozen=True)
class StepsTable:
    """A steps-table preset (--table-configs)."""

    configs: list[tuple[str, int, float]]  # (sampler, steps, eta), in the order they are measured
    ddpm_needs_discrete: bool  # DDPM 1000 steps only on a discrete schedule of >= 1000 steps (the paper's)


TABLES = {
    "bedrooms": StepsTable(DDIM_GRID + [("ddpm", 1000, 0.0)], ddpm_needs_discrete=False),
    # the DDIM paper's CIFAR-10 table (eta 0 and 1 at 10-100 steps, DDPM 1000 steps) and
    # DPM-Solver++(2M) at 10 and 20 steps; the headline first, then eta 0 and the cheap solver
    # rows before eta 1 (fewest network calls first), so a run stopped early has the most rows
    "cifar": StepsTable([HEADLINE] + [c for c in DDIM_GRID if c != HEADLINE and c[2] == 0.0]
                        + [("dpmpp_2m", 10, 0.0), ("dpmpp_2m", 20, 0.0)]
                        + [c for c in DDIM_GRID if c[2] != 0.0] + [("ddpm", 1000, 0.0)],
                        ddpm_needs_discrete=True),
}
TABLE = TABLES["bedrooms"].configs


def table_configs(preset: str, schedule: ScheduleConfig) -> list[tuple[str, int, float]]:
    """The preset's sampler settings for a model of ``schedule``: where the preset says so, DDPM
    1000 steps only on a discrete schedule of at least 1000 steps (the continuous cosine schedule
    has no such grid)."""
    if preset not in TABLES:
        raise ValueError(f"--table-configs: unknown preset {preset!r}; choose one of {', '.join(TABLES)}")
    table = TABLES[preset]
    has_grid = schedule.is_discrete and schedule.num_timesteps >= 1000
    return [c for c in table.configs if c[0] != "ddpm" or has_grid or not table.ddpm_needs_discrete]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--fid-weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default="runs")
    p.add_argument("--table", nargs="*", default=[], help="runs that get the full steps table")
    p.add_argument("--table-configs", default="bedrooms", choices=tuple(TABLES),
                   help="the steps table's sampler settings (default: bedrooms)")
    p.add_argument("--ship", nargs="*", default=[], help="runs whose fp16 weights are packed")
    p.add_argument("--num-samples", type=int, default=0, help="0: as many as real images")
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", nargs="*", help="evaluate only these runs (to spread runs over GPUs)")
    p.add_argument("--tag", default="all", help="results file name: results_TAG.json")
    p.add_argument("--reference-sizes", type=int, nargs="+",
                   help="only cache the real images' features and floors at these resolutions, then stop")
    args = p.parse_args()
    out = Path(args.out)
    torch.backends.cuda.matmul.allow_tf32 = True
    extractor = load_feature_extractor(args.fid_weights, args.device, batch_size=200)
    results: dict = {"weights": extractor.weights_id, "floors": {}, "runs": {}}
    real_cache: dict = {}

    def reference(size: int):
        if size not in real_cache:
            real = load_image_set(args.data, size, cache_dir=".cache/data")
            feats = cached_features(real.images, real.name, extractor, ".cache/fid")
            real_cache[size] = real
            results["floors"][size] = real_vs_real_floor(feats, frechet="eigh")
            print(f"floor at {size}px: {results['floors'][size]}", flush=True)
        return real_cache[size]

    if args.reference_sizes:
        for size in args.reference_sizes:
            reference(size)
            write_json(out / f"results_{args.tag}.json", results)
        return
    for run in sorted(Path(args.runs).glob("*/model.json")):
        name = run.parent.name
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        model = load_checkpoint(run, args.device)
        size = model.experiment.network.image_size
        real = reference(size)
        n = args.num_samples or len(real)
        schedule = model.experiment.schedule
        configs = table_configs(args.table_configs, schedule) if name in args.table else [HEADLINE]
        if model.experiment.family == "ddpm" and name not in args.table:
            configs = configs + [("ddpm", 1000, 0.0)]  # the DDPM paper's own sampler too
        evals = []
        for i, (sampler, steps, eta) in enumerate(configs):
            r = evaluate_model(model, real.images, real.name, SamplerConfig(sampler, steps, eta), n, extractor,
                               ".cache/fid", memorization=(sampler, steps, eta) == HEADLINE,
                               frechet="eigh",  # sqrtm took 34 s per call on a busy GPU host
                               equal_n_splits=3 if (sampler, steps, eta) in (HEADLINE, ("ddpm", 1000, 0.0)) else 0)
            record_result(run, r, protocol=(sampler, steps, eta) == HEADLINE and n == len(real))
            evals.append(r)
            eq = r.get("equal_n")
            eq_text = f" equal-N {eq['fid']:.2f}/{eq['floor_fid']:.2f}={eq['ratio']:.2f}" if eq else ""
            print(f"{name} {sampler} {steps} eta={eta}: FID {r['fid']:.2f}{eq_text} KID {r['kid']:.4f} "
                  f"near-copies {r.get('near_copy_share', '-')} ({r['sampling_time_s']} s)", flush=True)
            results["runs"][name] = {"evaluations": evals, "training": read_description(run)["training"],
                                     "eval_time_s": round(time.perf_counter() - t0, 1)}
            publish(run, name, out, ship=name in args.ship, first=i == 0)
            write_json(out / f"results_{args.tag}.json", results)  # after each evaluation: partial results survive


def publish(run: Path, name: str, out: Path, ship: bool, first: bool) -> None:
    """Put a run's measured description (and, when shipped, its fp16 weights) under ``out``.
    The weights, loss log and latest grid go once; the description after every evaluation, so a
    process stopped early keeps what was measured."""
    if ship and first:
        export_checkpoint(run, out / "checkpoints" / name)
    elif ship:
        update_description(out / "checkpoints" / name, metrics=read_description(run)["metrics"])
    else:
        write_json(out / "descriptions" / f"{name}.json", shipping_description(run))
    if not first:
        return
    log = run.parent / "log.jsonl"
    if log.exists():
        atomic_write_bytes(out / "logs" / f"{name}.log.jsonl", log.read_bytes())
    grids = sorted((run.parent / "samples").glob("*.png"))
    if grids:
        atomic_write_bytes(out / "grids" / f"{name}.png", grids[-1].read_bytes())


if __name__ == "__main__":
    main()
