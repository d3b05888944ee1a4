"""On the GPU machine, after training: export each run's EMA weights as fp16 checkpoints, measure
FID/KID/near-copies with the project's protocol, the real-vs-real floor per resolution and the
steps table for chosen models, all under --out (scripts/gpu/README.md says where each file goes).

python3 scripts/gpu/collect.py --data DATA --fid-weights W --out DIR [--table NAME ...] [--ship NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
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

TABLE = [("ddim", 10, 0.0), ("ddim", 20, 0.0), ("ddim", 50, 0.0), ("ddim", 100, 0.0),
         ("ddim", 10, 1.0), ("ddim", 20, 1.0), ("ddim", 50, 1.0), ("ddim", 100, 1.0), ("ddpm", 1000, 0.0)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--fid-weights", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default="runs")
    p.add_argument("--table", nargs="*", default=[], help="runs that get the full steps table")
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
        configs = TABLE if name in args.table else [("ddim", 50, 0.0)]
        if model.experiment.family == "ddpm" and name not in args.table:
            configs = configs + [("ddpm", 1000, 0.0)]  # the DDPM paper's own sampler too
        evals = []
        for i, (sampler, steps, eta) in enumerate(configs):
            r = evaluate_model(model, real.images, real.name, SamplerConfig(sampler, steps, eta), n, extractor,
                               ".cache/fid", memorization=(sampler, steps, eta) == ("ddim", 50, 0.0),
                               frechet="eigh",  # sqrtm took 34 s per call on a busy GPU host
                               equal_n_splits=3 if (sampler, steps, eta) in (("ddim", 50, 0.0), ("ddpm", 1000, 0.0)) else 0)
            record_result(run, r, protocol=(sampler, steps, eta) == ("ddim", 50, 0.0) and n == len(real))
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
