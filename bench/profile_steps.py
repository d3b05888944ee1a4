"""Where the time goes: torch.profiler over our real training step (``Trainer.train_step``, the
CLI's defaults: compiled with CUDA graphs on one GPU) and over one sampling network call (bf16 +
channels_last, as every generation path runs on CUDA; ``--sample-compile MODE`` compiles it), top
operators and kernels by device time, the device time summed by kernel kind (convolution forward,
data and weight gradients, Inductor's fused Triton kernels, optimizer, ...) and the wall-clock
time per call measured outside the profiler. The throughput benchmarks say how fast; this says
which kernels to attack next.

    python -m bench.profile_steps --device cuda                  # reference network, 64px, batch 256
    python -m bench.profile_steps --device cuda --batch 64 --what train --trace $OUT/train.json
    python -m bench.profile_steps --device cuda --what sample --sample-compile max-autotune-no-cudagraphs
    python -m bench.profile_steps --device cpu --quick           # smoke test (tiny network, eager)
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench.bench_sample import random_network
from bench.bench_train import experiment, random_images
from bench.common import REFERENCE, TINY, synchronize
from diffusion_core import unet
from diffusion_core.folding import fold_batchnorm
from diffusion_core.model import Denoiser, PixelNormalization
from diffusion_core.training import RunOptions, Trainer, compile_settings

# kernel kinds, first match wins: cuDNN/CUTLASS name their convolution kernels fprop/dgrad/wgrad
# (older ones implicit_convolve / wgrad_alg / dgrad_engine), Inductor's own kernels start "triton_"
KINDS = (
    ("conv weight gradient", r"wgrad|convolveBwdFilter|bwd_filter"),
    ("conv data gradient", r"dgrad|convolveBwdData|bwd_data"),
    ("conv forward", r"fprop|implicit_convolve|convolve_|conv2d|fwd_kernel|xmma_fwd"),
    ("matrix product", r"gemm|cutlass|matmul"),
    ("optimizer + EMA", r"adam|foreach|multi_tensor"),
    ("layout conversion", r"nchwToNhwc|nhwcToNchw|transpose|permute"),
    ("Inductor-fused (Triton)", r"^triton_"),
    ("memory copy/set", r"^Memcpy|^Memset|copy_kernel|fill"),
)
SAMPLE_COMPILE = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def kernel_kind(name: str) -> str:
    """Which kind of work a GPU kernel's name says it does ("other" when none matches)."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return kind
    return "other"


def device_time_by_kind(prof: torch.profiler.profile, calls: int) -> list[tuple[str, float, int]]:
    """(kind, device milliseconds per call, kernels per call) for the GPU kernels of a profile,
    largest first."""
    ms, count = defaultdict(float), defaultdict(int)
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA or evt.self_device_time_total <= 0:
            continue
        kind = kernel_kind(evt.key)
        ms[kind] += evt.self_device_time_total / 1e3 / calls
        count[kind] += evt.count
    return sorted(((k, ms[k], round(count[k] / calls)) for k in ms), key=lambda r: -r[1])


def heaviest_kernels(prof: torch.profiler.profile, calls: int, top: int) -> list[tuple[str, float, float]]:
    """(full kernel name, device ms per call, launches per call) of the ``top`` heaviest GPU kernels
    (the profiler's table cuts names at 55 characters; Inductor's names say which ops they fuse)."""
    rows = [(evt.key, evt.self_device_time_total / 1e3 / calls, evt.count / calls) for evt in prof.key_averages()
            if evt.device_type == torch.autograd.DeviceType.CUDA and evt.self_device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])[:top]


def wall_ms_per_call(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return 1e3 * (time.perf_counter() - start) / calls


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


BASELINES = ("none", "interpolate", "network-only", "both")


def use_baseline(baseline: str) -> None:
    """Put back what the current step replaced, for an A/B in one run: "interpolate" runs
    PyTorch's upsampling kernel as autocast runs it everywhere (instead of
    unet.upsample2x_written_out inside torch.compile, and of the bf16 kernel when sampling);
    "network-only" (see train_step) compiles the network alone instead of the whole loss."""
    if baseline in ("interpolate", "both"):
        unet.upsample2x_bilinear = lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def train_step(device: torch.device, network, batch: int, compile_mode: str | None,
               baseline: str = "none") -> Callable[[], object]:
    compile, mode = compile_settings(str(device), 1, None, compile_mode)
    out = tempfile.mkdtemp(prefix="profile-")
    trainer = Trainer(experiment(network, batch), random_images(16 * batch, network.image_size), out,
                      RunOptions(device=str(device), compile=compile, compile_mode=mode, progress=False))
    if compile and baseline in ("network-only", "both"):
        trainer.loss_of, trainer.forward = trainer._loss_of, torch.compile(trainer.eager, mode=mode)
    return trainer.train_step


def sampling_call(device: torch.device, network, batch: int, compile_mode: str = "none",
                  fold: bool = False) -> Callable[[], object]:
    net = random_network(network, device)
    if device.type == "cuda":  # as checkpoint.load_checkpoint prepares a network for sampling on CUDA
        net = net.to(memory_format=torch.channels_last)
    if fold:
        net = fold_batchnorm(net.eval())
    if compile_mode != "none":
        net = torch.compile(net, mode=None if compile_mode == "default" else compile_mode)
    denoiser = Denoiser(net, "v", PixelNormalization())  # bf16 + channels_last on CUDA
    x = torch.randn(batch, 3, network.image_size, network.image_size, device=device)
    return lambda: denoiser(x, 0.8, 0.6)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--what", choices=("train", "sample", "both"), default="both")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                   help="training's torch.compile mode (default: what `train` picks for this device)")
    p.add_argument("--sample-compile", choices=SAMPLE_COMPILE, default="none",
                   help="torch.compile the sampling network in this mode (default: eager, as the app runs)")
    p.add_argument("--baseline", choices=BASELINES, default="none",
                   help="profile an implementation this code replaced: PyTorch's upsampling under compile "
                        "(interpolate), the network compiled alone (network-only), or both")
    p.add_argument("--fold-batchnorm", action="store_true",
                   help="sample with BatchNorm folded into the convolutions (diffusion_core.folding)")
    p.add_argument("--warmup", type=int, default=20, help="calls before profiling (compilation, capture)")
    p.add_argument("--steps", type=int, default=10, help="profiled calls (and as many timed ones)")
    p.add_argument("--top", type=int, default=25, help="rows of each table")
    p.add_argument("--trace", help="also write a Chrome trace (chrome://tracing, Perfetto) of the last profile")
    p.add_argument("--quick", action="store_true", help="tiny network and batch, 2 + 2 calls (smoke test)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # the project's CUDA defaults, as training.Trainer and the benchmarks set them
        torch.backends.cudnn.benchmark = True
    network, batch = (TINY, 4) if args.quick else (REFERENCE, args.batch)
    warmup, steps = (2, 2) if args.quick else (args.warmup, args.steps)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    use_baseline(args.baseline)
    jobs = {"train": lambda: train_step(device, network, batch, args.compile_mode, args.baseline),
            "sample": lambda: sampling_call(device, network, batch, args.sample_compile, args.fold_batchnorm)}
    for what in ("train", "sample") if args.what == "both" else (args.what,):
        fn = jobs[what]()
        prof = profiled(fn, device, warmup, steps, args.trace)
        wall = wall_ms_per_call(fn, device, steps)
        print(f"\n## {what}{'' if args.baseline == 'none' else f' (baseline: {args.baseline})'}: "
              f"{network.widths} d{network.block_depth}, {network.image_size}px, batch {batch}, "
              f"{steps} profiled calls on {device} (sorted by {sort})\n", flush=True)
        print(prof.key_averages().table(sort_by=sort, row_limit=args.top), flush=True)
        kinds = device_time_by_kind(prof, steps)
        busy = sum(ms for _, ms, _ in kinds)
        print(f"wall clock {wall:.2f} ms per call ({batch / wall * 1e3:,.0f} images/s), outside the profiler", flush=True)
        if kinds:
            print(f"GPU busy {busy:.2f} ms per call ({100 * busy / wall:.0f}% of the wall clock), by kernel kind:")
            for kind, ms, n in kinds:
                print(f"  {kind:26s} {ms:7.3f} ms  {100 * ms / busy:5.1f}%  {n:4d} kernels", flush=True)
            print("heaviest kernels, full names (ms per call, launches per call):")
            for name, ms, n in heaviest_kernels(prof, steps, args.top):
                print(f"  {ms:7.3f} ms {n:5.1f}x  {name[:300]}", flush=True)


if __name__ == "__main__":
    main()
