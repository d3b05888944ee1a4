"""FID against training time: evaluate every snapshot that `train --keep-snapshots` kept in
RUN/snapshots/ (one per save: every train.checkpoint_every epochs and at the time limit) at one
stated N and sampler setting, against the real images of the data set. One JSON line per snapshot
goes to --out after each evaluation (a process stopped early keeps what it measured); --record adds
the curve to a description's metrics (``fid_curve``) for scripts/results_table.py.

    python3 scripts/gpu/curve.py runs/cifar10 --data DATA --fid-weights W --num-samples 10000 \
        --config ddim:50:0 --points 6 --out res/curve_cifar10.json [--record res/g0/checkpoints/cifar10.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sample_features, beside this file

import numpy as np
import torch
from sample_features import parse_config

from diffusion_core.checkpoint import load_checkpoint, modify_description, read_description
from diffusion_core.data import load_image_set
from diffusion_core.evaluation import evaluate_model
from diffusion_core.fid import load_feature_extractor
from diffusion_core.files import write_json


def snapshots(run: Path) -> list[Path]:
    """The run's snapshot descriptions in step order (names step_STEP.json, zero-padded)."""
    found = sorted((run / "snapshots").glob("step_*.json"))
    if not found:
        raise ValueError(f"{run / 'snapshots'}: no snapshots; train with --keep-snapshots")
    return found


def spread(paths: list[Path], points: int | None) -> list[Path]:
    """At most ``points`` of the snapshots, evenly spaced in save order, the first and last kept."""
    if not points or points >= len(paths):
        return paths
    if points == 1:
        return paths[-1:]
    picks = np.linspace(0, len(paths) - 1, points).round().astype(int)
    return [paths[i] for i in sorted(set(picks.tolist()))]


def curve_point(description: dict, result: dict) -> dict:
    """One point of the curve: the snapshot's training time and images seen beside its FID/KID."""
    training = description["training"]
    return {"step": training["steps"], "epochs": round(training["epochs_completed"], 2),
            "images_seen": training["images_seen"], "gpu_minutes": round(training["wall_time_s"] / 60, 2),
            "device": training.get("device"), "fid": result["fid"], "kid": result["kid"],
            "num_samples": result["num_samples"], "num_reference": result["num_reference"],
            "sampler": result["sampler"], "steps": result["steps"], "eta": result["eta"],
            "weights": result["weights"], "sampling_time_s": result["sampling_time_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the training run's folder (holds snapshots/)")
    p.add_argument("--data", required=True)
    p.add_argument("--fid-weights", required=True)
    p.add_argument("--num-samples", type=int, default=10_000, help="N samples per snapshot (default 10000)")
    p.add_argument("--config", type=parse_config, default=parse_config("ddim:50:0"), help="SAMPLER:STEPS:ETA")
    p.add_argument("--points", type=int, help="evaluate at most this many snapshots, evenly spaced (default: all)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True, help="the curve, a JSON file")
    p.add_argument("--record", type=Path, help="a description (.json) whose metrics get the curve")
    args = p.parse_args()
    if args.num_samples < 2:
        sys.exit("--num-samples: FID needs at least 2 samples")
    if args.points is not None and args.points < 1:
        sys.exit("--points: give at least 1")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    extractor = load_feature_extractor(args.fid_weights, args.device, batch_size=200)
    points, real = [], None
    for path in spread(snapshots(args.run), args.points):
        t0 = time.perf_counter()
        model = load_checkpoint(path, args.device)
        size = model.experiment.network.image_size
        if real is None:
            real = load_image_set(args.data, size, cache_dir=".cache/data")
        r = evaluate_model(model, real.images, real.name, args.config, args.num_samples, extractor, ".cache/fid",
                           memorization=False, frechet="eigh")
        points.append(curve_point(read_description(path), r))
        last = points[-1]
        print(f"{path.stem}: {last['gpu_minutes']:.1f} GPU-min, {last['images_seen']:,} images: FID {last['fid']:.2f} "
              f"KID {last['kid']:.4f} (N = {last['num_samples']:,}, {time.perf_counter() - t0:.0f} s)", flush=True)
        write_json(args.out, {"run": args.run.name, "points": points})
    if args.record:
        modify_description(args.record, lambda d: d.update(metrics=dict(d.get("metrics") or {}, fid_curve=points)))


if __name__ == "__main__":
    main()
