"""Where the time goes: torch.profiler over our real training step (``Trainer.train_step``, the
CLI's defaults: compiled with CUDA graphs on one GPU) and over one sampling network call (bf16 +
channels_last, as every generation path runs on CUDA), top operators and kernels by device time.
The throughput benchmarks say how fast; this says which kernels to attack next (issue #4).

    python -m bench.profile_steps --device cuda                  # reference network, 64px, batch 256
    python -m bench.profile_steps --device cuda --batch 64 --what train --trace $OUT/train.json
    python -m bench.profile_steps --device cpu --quick           # smoke test (tiny network, eager)
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from bench.bench_sample import random_network
from bench.bench_train import experiment, random_images
from bench.common import REFERENCE, TINY, synchronize
from diffusion_core.model import Denoiser, PixelNormalization
from diffusion_core.training import RunOptions, Trainer, compile_settings


def profiled(fn: Callable[[], object], device: torch.device, warmup: int, steps: int,
             trace: str | None) -> torch.profiler.profile:
    """Run ``fn`` ``warmup`` times (compilation, graph capture, cudnn autotuning), then profile
    ``steps`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    if trace:
        prof.export_chrome_trace(trace)
    return prof


def train_step(device: torch.device, network, batch: int, compile_mode: str | None) -> Callable[[], object]:
    compile, mode = compile_settings(str(device), 1, None, compile_mode)
    out = tempfile.mkdtemp(prefix="profile-")
    trainer = Trainer(experiment(network, batch), random_images(16 * batch, network.image_size), out,
                      RunOptions(device=str(device), compile=compile, compile_mode=mode, progress=False))
    return trainer.train_step


def sampling_call(device: torch.device, network, batch: int) -> Callable[[], object]:
    denoiser = Denoiser(random_network(network, device), "v", PixelNormalization())  # bf16 on CUDA
    x = torch.randn(batch, 3, network.image_size, network.image_size, device=device)
    return lambda: denoiser(x, 0.8, 0.6)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--what", choices=("train", "sample", "both"), default="both")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                   help="training's torch.compile mode (default: what `train` picks for this device)")
    p.add_argument("--warmup", type=int, default=20, help="calls before profiling (compilation, capture)")
    p.add_argument("--steps", type=int, default=10, help="profiled calls")
    p.add_argument("--top", type=int, default=25, help="rows of each table")
    p.add_argument("--trace", help="also write a Chrome trace (chrome://tracing, Perfetto) of the last profile")
    p.add_argument("--quick", action="store_true", help="tiny network and batch, 2 + 2 calls (smoke test)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    network, batch = (TINY, 4) if args.quick else (REFERENCE, args.batch)
    warmup, steps = (2, 2) if args.quick else (args.warmup, args.steps)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    jobs = {"train": lambda: train_step(device, network, batch, args.compile_mode),
            "sample": lambda: sampling_call(device, network, batch)}
    for what in ("train", "sample") if args.what == "both" else (args.what,):
        prof = profiled(jobs[what](), device, warmup, steps, args.trace)
        print(f"\n## {what}: {network.widths} d{network.block_depth}, {network.image_size}px, batch {batch}, "
              f"{steps} profiled calls on {device} (sorted by {sort})\n", flush=True)
        print(prof.key_averages().table(sort_by=sort, row_limit=args.top), flush=True)


if __name__ == "__main__":
    main()
