"""Sampling throughput: 50-step DDIM of 256 images with our sampler (float32; bf16 autocast;
bf16 + channels_last; + compiled network; + BatchNorm folded; + both; the fused Triton network as
a CUDA graph, the CLI's CUDA path for long jobs) and with diffusers' DDIM loop;
the check that the optimised sampler gives the float32 images; and the grid overhead of the
sampler (a 4-image grid against bare network calls), the figure that matters on a CPU.

    python -m bench.bench_sample --device cuda           # about 1.5 minutes on one H100
    python -m bench.bench_sample --device cpu --threads 2  # only the CPU grid case
    python -m bench.bench_sample --device cpu --quick    # smoke test of every case
"""

from __future__ import annotations

import contextlib
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench import peers
from bench.common import (REFERENCE, TINY, Case, Row, Settings, Unavailable, describe, forward_gflop_per_image,
                          full_fp32, main, measure, synchronize)
from diffusion_core import runtime
from diffusion_core.checkpoint import LoadedModel
from diffusion_core.config import ExperimentConfig
from diffusion_core.folding import fold_batchnorm
from diffusion_core.fused.unet import CudaGraphed, FusedUNet, fused_available
from diffusion_core.generate import generate
from diffusion_core.model import Denoiser, PixelNormalization
from diffusion_core.networks import count_parameters
from diffusion_core.samplers import SamplerConfig, sample, sample_steps, seed_noise
from diffusion_core.schedules import ScheduleConfig
from diffusion_core.unet import UNet, UNetConfig

REL_L2_TOLERANCE = 2.0**-6  # four bf16 roundings
VARIANTS = {  # our sampler: label -> (autocast, channels_last, network, torch.compile), as in the table
    "fp32": (None, False, "plain", False),
    "bf16": (torch.bfloat16, False, "plain", False),
    "bf16_cl": (torch.bfloat16, True, "plain", False),
    "bf16_cl_compiled": (torch.bfloat16, True, "plain", True),
    "bf16_cl_folded": (torch.bfloat16, True, "folded", False),  # runtime.denoiser() on CUDA: the app's
    "bf16_cl_folded_compiled": (torch.bfloat16, True, "folded", True),  # torch.compile, where Triton cannot run
    "bf16_fused": (torch.bfloat16, True, "fused", False),  # denoiser(compile=True): generate() for long jobs
}
LABELS = {"fp32": "fp32", "bf16": "bf16", "bf16_cl": "bf16 + channels_last",
          "bf16_cl_compiled": "bf16 + channels_last + compiled",
          "bf16_cl_folded": "bf16 + channels_last + folded BatchNorm",
          "bf16_cl_folded_compiled": "bf16 + channels_last + folded BatchNorm + compiled",
          "bf16_fused": "bf16 + fused Triton kernels, CUDA graph"}


def random_network(config: UNetConfig, device: torch.device) -> UNet:
    """Randomly initialised, in eval mode, with a random head scaled so that its prediction has unit
    standard deviation on pure noise, as a trained v-network's would. (A fresh UNet's zero head
    predicts zero everywhere and would make every comparison trivially exact.)"""
    torch.manual_seed(0)
    net = UNet(config).to(device).eval()
    net.head.reset_parameters()
    s = config.image_size
    noise = torch.randn(4, config.channels, s, s, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        std = net(noise, torch.ones(4, device=device)).std()
        net.head.weight /= std
        net.head.bias /= std
    return net


def unet_gflop(net: UNet, device: torch.device) -> float:
    s = net.config.image_size
    x = torch.randn(2, 3, s, s, device=device)
    return forward_gflop_per_image(lambda: net(x, torch.rand(2, device=device)), 2)


def sizes(settings: Settings) -> tuple[UNetConfig, int, int]:
    """(network, images, steps) of the throughput cases."""
    return (TINY, 4, 3) if settings.quick else (REFERENCE, 256, 50)


# --- ours -------------------------------------------------------------------------------------
def ours(settings: Settings, variant: str, outputs: dict[str, torch.Tensor]) -> Row:
    """DDIM (eta = 0) with sample_steps + Denoiser; the final x_0 goes to ``outputs[variant]``.
    The random network is read as a v-predictor: x0 = alpha x_t - sigma v stays in the data range,
    whereas a random eps-predictor makes x0 = (x_t - sigma eps) / alpha about 50 times the noise at
    the first step and saturates every pixel. The cost is the same either way."""
    network, n, steps = sizes(settings)
    autocast, channels_last, kind, compile = VARIANTS[variant]
    net = random_network(network, settings.device)
    if kind == "fused" and not fused_available(net):
        raise Unavailable("the fused kernels need CUDA on an sm80+ GPU and Triton")
    gflop = unet_gflop(net, settings.device)
    params = count_parameters(net)
    x_T = seed_noise(range(n), (3, network.image_size, network.image_size), settings.device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x_T = x_T.contiguous(memory_format=torch.channels_last)
    if kind == "folded":
        net = fold_batchnorm(net)
    elif kind == "fused":
        net = CudaGraphed(FusedUNet(net))
    if compile:
        net = torch.compile(net)
    denoiser = Denoiser(net, "v", PixelNormalization(), autocast)
    config = SamplerConfig("ddim", steps)

    def run() -> torch.Tensor:
        outputs[variant] = sample(sample_steps(denoiser, ScheduleConfig(), x_T, config))
        return outputs[variant]

    with full_fp32(settings.device) if autocast is None else contextlib.nullcontext():
        timing = measure(run, n, settings)
    note = ", ".join(["bf16 autocast" if autocast else "fp32, TF32 off"] + ["channels_last"] * channels_last
                     + {"plain": [], "folded": ["BatchNorm folded"],
                        "fused": [f"fused Triton kernels as a CUDA graph; first call {timing.first_call_s:.1f} s"]}[kind]
                     + [f"compiled; first call {timing.first_call_s:.1f} s" if compile else "eager"] * (kind != "fused"))
    return Row(params=params, gflop_per_image=gflop, passes=steps, images_per_s=timing.images_per_s,
               note=note)


def agreement(settings: Settings, outputs: dict[str, torch.Tensor]) -> Row:
    """Optimised samples vs the float32 ones from the same noise: the largest pixel difference
    (uint8 units of 1/255) and the relative L2 distance of the final tensors, which should be
    within a few bf16 roundings (bf16 keeps 8 significant bits: 2^-8 = 3.9e-3)."""
    if "fp32" not in outputs:
        raise RuntimeError("the float32 sampling case did not run")
    ref = outputs["fp32"].float()
    to_pixels = PixelNormalization().to_pixels
    ref_pixels = to_pixels(ref).astype(np.int16)
    parts, metrics = [], {}
    for variant in [v for v in VARIANTS if v != "fp32"]:
        if variant not in outputs:
            parts.append(f"{variant}: did not run")
            continue
        x = outputs[variant].float()
        max_px = int(np.abs(to_pixels(x).astype(np.int16) - ref_pixels).max())
        rel_l2 = float((x - ref).norm() / ref.norm())
        ok = rel_l2 <= REL_L2_TOLERANCE
        metrics[variant] = {"max_abs_pixels": max_px, "relative_l2": rel_l2, "within_tolerance": ok}
        parts.append(f"{variant}: max diff {max_px}/255, rel L2 {rel_l2:.1e} ({'ok' if ok else 'TOO LARGE'})")
    clipped = float(((ref < -1) | (ref > 1)).float().mean())
    return Row(note="; ".join(parts) + f"; tolerance rel L2 <= 2^-6; {100 * clipped:.0f}% of fp32 pixels clip",
               metrics=metrics)


# --- diffusers --------------------------------------------------------------------------------
def diffusers(settings: Settings, bf16: bool) -> Row:
    _, n, steps = sizes(settings)
    size, widths, layers = (16, (32, 32), 1) if settings.quick else (64, (32, 64, 96, 128), 2)
    torch.manual_seed(0)
    unet = peers.diffusers_unet(size, widths, layers).to(settings.device).eval()
    x = torch.randn(2, 3, size, size, device=settings.device)
    gflop = forward_gflop_per_image(lambda: unet(x, torch.tensor([10, 500], device=settings.device)), 2)
    x_T = seed_noise(range(n), (3, size, size), settings.device)
    run = peers.diffusers_ddim(unet, x_T, steps, bf16)
    with contextlib.nullcontext() if bf16 else full_fp32(settings.device):
        timing = measure(run, n, settings)
    return Row(params=count_parameters(unet), gflop_per_image=gflop, passes=steps, images_per_s=timing.images_per_s,
               note=f"DDIMScheduler + UNet2DModel, eager, {'bf16 autocast' if bf16 else 'fp32, TF32 off'}")


# --- the grid overhead ---------------------------------------------------------------------------
def grid_overhead(settings: Settings) -> Row:
    """A DDIM grid of 4 images as the app makes it (generate(): noise per seed, sampler, uint8
    pixels) vs the same number of bare network calls on the same batch, timed alternately."""
    if settings.quick:
        network, steps, pairs = TINY, 3, 2
    else:
        network, steps, pairs = REFERENCE, 20, max(settings.windows, 20 if settings.cuda else 7)
    net = random_network(network, settings.device)
    exp = ExperimentConfig(name="bench", network=network)
    model = LoadedModel("bench", Path("bench.json"), net, exp, PixelNormalization(), {})
    seeds = list(range(4))
    config = SamplerConfig("ddim", steps)
    x = seed_noise(seeds, model.image_shape, settings.device)
    variance = torch.full((len(seeds),), 0.5, device=settings.device)
    denoiser = runtime.denoiser(model)  # what a grid runs (too few calls for a compiled network): the folded network

    def bare() -> torch.Tensor:
        for _ in range(steps):
            out = denoiser.network_output(x, variance)
        return out

    grid = partial(generate, model, seeds, config)
    grid(), bare()  # warm-up
    wall, cpu = {"grid": [], "bare": []}, {"grid": [], "bare": []}
    for _ in range(pairs):
        for name, fn in (("grid", grid), ("bare", bare)):
            seconds, cpu_seconds = _seconds(fn, settings.device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    g, b = statistics.median(wall["grid"]), statistics.median(wall["bare"])
    ratio, fastest = g / b, min(wall["grid"]) / min(wall["bare"])
    cpu_ratio = statistics.median(cpu["grid"]) / statistics.median(cpu["bare"])
    note = (f"{steps}-step grid {1e3 * g:.0f} ms vs {steps} bare network calls {1e3 * b:.0f} ms: ratio {ratio:.2f} "
            f"(fastest pair {fastest:.2f}"
            + ("" if settings.cuda else f", process CPU time {cpu_ratio:.2f}")
            + f"; target <= 1.2; medians of {pairs} alternating pairs)")
    metrics = {"grid_s": g, "bare_s": b, "ratio": ratio, "ratio_of_fastest": fastest, "cpu_time_ratio": cpu_ratio,
               "wall_s": wall, "cpu_s": cpu}
    return Row(params=count_parameters(net), gflop_per_image=unet_gflop(net, settings.device), passes=steps,
               images_per_s=len(seeds) / g, note=note, metrics=metrics)


def _seconds(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call. On a shared CPU the second
    counts only this process's work and so holds up when other jobs compete for the cores."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


# --- the list ---------------------------------------------------------------------------------
def cases(settings: Settings) -> list[Case]:
    network, n, steps = sizes(settings)
    grid = Case("grid overhead", f"ours {describe(REFERENCE if not settings.quick else TINY)}, 4 images, DDIM",
                partial(grid_overhead, settings))
    if not settings.cuda and not settings.quick:
        return [grid]  # the throughput cases are GPU-sized
    outputs: dict[str, torch.Tensor] = {}
    label = f"{describe(network)}, {n} images, {steps}-step DDIM"
    return [
        *(Case("sample", f"ours {label}, {LABELS[v]}", partial(ours, settings, v, outputs)) for v in VARIANTS),
        Case("sample peers", f"diffusers {n} images, {steps}-step DDIM, fp32", partial(diffusers, settings, False)),
        Case("sample peers", f"diffusers {n} images, {steps}-step DDIM, bf16", partial(diffusers, settings, True)),
        Case("quality", "sampling: optimised vs fp32, same noise", partial(agreement, settings, outputs)),
        grid,
    ]


if __name__ == "__main__":
    main([cases], description=__doc__.splitlines()[0])
