"""Limits and defaults of the app's actions, chosen by model size and device (no streamlit).

The cost of one network evaluation is estimated from the U-Net's layout (multiply-adds of its
convolutions), so defaults are the same on every visit and every machine of a kind: small models
get 4 images and 20 DDIM steps, big ones fewer steps (and, if need be, fewer images), so that the
default action of each page takes a few seconds on a 2-core CPU.
"""

from __future__ import annotations

from typing import Sequence

from diffusion_core import seeds as core_seeds
from diffusion_core.config import ExperimentConfig
from diffusion_core.samplers import DEFAULT_SAMPLER, REGISTRY
from diffusion_core.unet import UNetConfig

MAX_IMAGES = 256  # images in one grid
MAX_GRID_PIXELS = 256 * 128 * 128  # images x H x W of one request (about 12 MiB of uint8 RGB)
MAX_TRAJECTORY_PIXELS = 1001 * 80 * 80  # frames x H x W of one cached trajectory (2 arrays, ~38 MiB)
MAX_SEEDS = 16  # key seeds of an interpolation
MAX_FRAMES = 64  # interpolation frames
MAX_SEED = 2**31 - 1  # the seed widgets' maximum; the core takes any seed below 2**63 (diffusion_core.seeds)
SWEEP_STEPS = (5, 10, 20, 50, 100)
DEFAULT_SECONDS = 2.5  # target time of a page's default action
AUTO_SECONDS = 10.0  # beyond this estimate an action waits for its button
# Live page: while a run goes on, the browser asks for its next slice every LIVE_TICK_SECONDS; a tick
# draws the newest frame, then computes for LIVE_SLICE_SECONDS (at least one step). The tick is the
# shorter, so the next request is waiting when a slice ends and the slices follow each other.
LIVE_TICK_SECONDS = 0.2
LIVE_SLICE_SECONDS = 0.3
SECONDS_PER_GFLOP = {"cpu": 0.011, "mps": 0.002, "cuda": 0.0002}  # cpu: per thread (measured, 2 cores)


def gflops_per_image(net: UNetConfig) -> float:
    """Estimated GFLOPs (2 x multiply-adds) of one network evaluation on one image, following the
    layout in ``diffusion_core.unet``: 3x3 convolutions, 1x1 shortcuts, stem and head. A network
    kind whose config counts its own cost (diffusers' UNet2DModel) is asked instead."""
    if not isinstance(net, UNetConfig) and hasattr(net, "gflops_per_image"):
        return net.gflops_per_image()
    S, C = net.image_size, net.channels

    def block(cin: int, cout: int, r: int) -> int:
        return (9 * cin * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)) * r * r

    macs = C * net.widths[0] * S * S
    ch, skips = net.widths[0] + net.embedding_dims, []
    for level, width in enumerate(net.widths[:-1]):
        for _ in range(net.block_depth):
            macs += block(ch, width, net.resolutions[level])
            ch = width
            skips.append(ch)
    for _ in range(net.block_depth):
        macs += block(ch, net.widths[-1], net.resolutions[-1])
        ch = net.widths[-1]
    for level in reversed(range(len(net.widths) - 1)):
        for _ in range(net.block_depth):
            macs += block(ch + skips.pop(), net.widths[level], net.resolutions[level])
            ch = net.widths[level]
    macs += ch * C * S * S
    return 2 * macs / 1e9


def seconds_per_gflop(device: str, threads: int) -> float:
    kind = device.split(":")[0]
    per = SECONDS_PER_GFLOP.get(kind, SECONDS_PER_GFLOP["cpu"])
    return per / max(1, threads) if kind == "cpu" else per


def estimate_seconds(gflops: float, evaluations: int, device: str, threads: int) -> float:
    """Rough time of ``evaluations`` image-evaluations (images x steps) of a network."""
    return gflops * evaluations * seconds_per_gflop(device, threads)


def default_plan(gflops: float, device: str, threads: int, count: int = 4,
                 ladder: Sequence[int] = (20, 10, 5), limit: int = 1000, share: float = 1.0) -> tuple[int, int]:
    """(images, steps) for a default action: the most steps of ``ladder`` (then fewer images)
    that fit ``share`` of ``DEFAULT_SECONDS``; never more steps than the schedule's ``limit``."""
    ladder = [min(s, limit) for s in ladder]
    for n in dict.fromkeys((count, max(1, count // 2), 1)):
        for steps in ladder:
            if estimate_seconds(gflops, n * steps, device, threads) <= share * DEFAULT_SECONDS:
                return n, steps
    return 1, ladder[-1]


def trained_sampler(experiment: ExperimentConfig) -> str:
    """The sampler a checkpoint was trained for, its pages' default: the description's family
    names it (``ddpm``: Ho et al.'s ancestral sampler, the linear-schedule noise predictor it was
    trained with; ``ddim``: DDIM), else the default sampler."""
    return experiment.family if experiment.family in REGISTRY else DEFAULT_SAMPLER


def sweep_steps(limit: int) -> list[int]:
    """The step counts of a step sweep that a schedule allows."""
    return [s for s in SWEEP_STEPS if s <= limit] or [limit]


def sweep_default(choices: Sequence[int], gflops: float, device: str, threads: int,
                  share: float = 1.0) -> list[int]:
    """The fewest-steps part of a sweep whose evaluations (one image) fit ``share`` of
    ``DEFAULT_SECONDS``."""
    chosen: list[int] = []
    for steps in sorted(choices):
        if chosen and estimate_seconds(gflops, sum(chosen) + steps, device, threads) > share * DEFAULT_SECONDS:
            break
        chosen.append(steps)
    return chosen


def check_grid(count: int, image_size: int) -> None:
    """Raise ValueError for a grid too large to make and show."""
    if count < 1:
        raise ValueError("ask for at least one image")
    if count > MAX_IMAGES:
        raise ValueError(f"{count} images is more than the {MAX_IMAGES} one grid may hold; "
                         "make several grids with different seeds instead")
    if count * image_size * image_size > MAX_GRID_PIXELS:
        fit = MAX_GRID_PIXELS // (image_size * image_size)
        raise ValueError(f"{count} images of {image_size}x{image_size} pixels is too large a grid "
                         f"for memory; at this size choose at most {fit} images")


def check_trajectory(steps: int, image_size: int) -> None:
    """Raise ValueError for a trajectory too long to keep in memory at this image size."""
    if (steps + 1) * image_size * image_size > MAX_TRAJECTORY_PIXELS:
        fit = MAX_TRAJECTORY_PIXELS // (image_size * image_size) - 1
        raise ValueError(f"a trajectory of {steps} steps at {image_size}x{image_size} is too large to keep; "
                         f"choose at most {fit} steps at this size")


def seed_range(start: int, count: int) -> list[int]:
    """Seeds start, start+1, ... (count of them), under the core's seed bound (diffusion_core.seeds)."""
    return core_seeds.seed_range(start, count, MAX_IMAGES)


def parse_seeds(text: str, max_seeds: int = MAX_SEEDS) -> list[int]:
    """"3, 17, 42", "3 17 42", "0-3" or "0:4" -> a seed list, in the core's grammar (diffusion_core.seeds)."""
    return core_seeds.parse_seeds(text, max_seeds)
