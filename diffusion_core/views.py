"""Views on a trained model beyond single grids: a grid over any two of its settings, a
trajectory branched at a step, and the neighbourhood of a seed in noise space.

Pure functions over the samplers' step generators (``samplers.py``) and a ``LoadedModel``'s
denoiser; images come back as uint8 [N x H x W x 3] like ``generate``. Tensors are
[N x C x H x W]. Every sampler loop runs through the caller's ``drive`` if given (``generate.Drive``:
the app takes its device lock per step, shows progress and stops a job), with the same results.
No streamlit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from . import runtime
from .checkpoint import LoadedModel
from .generate import Drive, driven, generate
from .samplers import REGISTRY, Denoise, NoiseSource, SamplerConfig, check_steps, sample, sample_steps, seed_noise
from .schedules import ScheduleConfig, time_grid
from .seeds import parse_seeds

# ------------------------------------------------------------------------------ grid over two axes
AXES = ("checkpoint", "sampler", "steps", "eta", "seed")  # what a grid's rows and columns may vary
MAX_AXIS_VALUES = 16


@dataclass(frozen=True)
class Cell:
    """The settings of one image of a grid."""

    checkpoint: str  # a key of the models mapping
    sampler: str  # a key of samplers.REGISTRY
    steps: int
    eta: float  # read only by samplers that take it (others ignore it: see ``config``)
    seed: int

    def config(self) -> SamplerConfig:
        """The cell's sampler settings; a sampler without eta runs without it, so that a
        sampler x eta grid is defined everywhere (its eta-less cells repeat along the eta axis)."""
        return SamplerConfig(self.sampler, self.steps, self.eta if REGISTRY[self.sampler].uses_eta else 0.0)


@dataclass(frozen=True)
class Axis:
    """One direction of a grid: the setting it varies and its values, in order."""

    name: str  # one of AXES
    values: tuple

    def __post_init__(self) -> None:
        if self.name not in AXES:
            raise ValueError(f"unknown grid axis {self.name!r}; choose one of {', '.join(AXES)}")
        if not 1 <= len(self.values) <= MAX_AXIS_VALUES:
            raise ValueError(f"the {self.name} axis needs 1 to {MAX_AXIS_VALUES} values, got {len(self.values)}")


def parse_axis(name: str, text: str | Sequence[str]) -> Axis:
    """An axis from what a user typed: seeds in the seed grammar (``seeds.py``), steps as whole
    numbers, eta as numbers from 0 to 1, samplers and checkpoints as names (a sequence or a
    comma-separated string). Raises ValueError naming the axis."""
    if name == "seed":
        return Axis(name, tuple(parse_seeds(text, MAX_AXIS_VALUES)))
    items = [t for t in (text.replace(",", " ").split() if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        raise ValueError(f"give at least one {name} value")
    if name == "steps":
        if not all(str(t).isdigit() and int(t) >= 1 for t in items):
            got = ", ".join(map(str, items))
            raise ValueError(f"steps must be whole numbers from 1 up, e.g. 10, 20, 50; got {got}")
        return Axis(name, tuple(int(t) for t in items))
    if name == "eta":
        try:
            values = tuple(float(t) for t in items)
        except ValueError:
            got = ", ".join(items)
            raise ValueError(f"eta values must be numbers from 0 to 1, e.g. 0, 0.5, 1; got {got}") from None
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"eta values must be from 0 to 1, got {', '.join(items)}")
        return Axis(name, values)
    if name == "sampler":
        unknown = [t for t in items if t not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown sampler {unknown[0]!r}; choose from {', '.join(REGISTRY)}")
    return Axis(name, tuple(str(t) for t in items))


def axis_label(name: str, value) -> str:
    """The label of one row or column: "seed 3", "20 steps", "eta 0.5", the sampler's label, the checkpoint."""
    if name == "seed":
        return f"seed {value}"
    if name == "steps":
        return f"{value} steps"
    if name == "eta":
        return f"eta {value:g}"
    if name == "sampler":
        return REGISTRY[value].label
    return str(value)


def grid_cells(base: Cell, rows: Axis, cols: Axis) -> tuple[tuple[Cell, ...], ...]:
    """The cells [R x C] of a grid: ``base`` with the row's value, then the column's, put in."""
    if rows.name == cols.name:
        raise ValueError(f"rows and columns vary the same setting ({rows.name}); choose two different axes")
    return tuple(tuple(replace(replace(base, **{rows.name: r}), **{cols.name: c}) for c in cols.values)
                 for r in rows.values)


def check_cells(cells: Sequence[Sequence[Cell]], models: Mapping[str, LoadedModel]) -> None:
    """Raise ValueError for a cell whose checkpoint is missing or whose steps its schedule refuses."""
    for cell in (c for row in cells for c in row):
        if cell.checkpoint not in models:
            raise ValueError(f"checkpoint {cell.checkpoint!r} is not among the loaded ones")
        try:
            check_steps(cell.config(), models[cell.checkpoint].experiment.schedule)
        except ValueError as e:
            raise ValueError(f"{cell.checkpoint}, {cell.sampler}: {e}") from None


def grid_groups(cells: Sequence[Sequence[Cell]]) -> dict[tuple[str, SamplerConfig], list[int]]:
    """The cells' flat indices (row by row) by (checkpoint, sampler settings): each group is sampled
    in one batch, and its cells of the same seed share one image."""
    groups: dict[tuple[str, SamplerConfig], list[int]] = {}
    for i, cell in enumerate(c for row in cells for c in row):
        groups.setdefault((cell.checkpoint, cell.config()), []).append(i)
    return groups


def grid_steps(cells: Sequence[Sequence[Cell]], checkpoint: str | None = None) -> int:
    """Image-steps that ``grid_images`` runs (of one checkpoint's cells if given): every distinct
    image's steps once (cells that repeat an image, e.g. an eta-less sampler along an eta axis,
    cost nothing more)."""
    flat = [c for row in cells for c in row]
    return sum(config.num_steps * len({flat[i].seed for i in where})
               for (name, config), where in grid_groups(cells).items() if checkpoint in (None, name))


def grid_images(cells: Sequence[Sequence[Cell]], models: Mapping[str, LoadedModel],
                drives: Mapping[str, Drive] | None = None) -> np.ndarray:
    """The images of the cells, uint8 [R x C x S x S x 3] with S the largest image size of the
    models (smaller images scaled up, nearest). Cells of the same checkpoint and sampler settings
    are sampled in one batch: an image depends only on its seed and settings (``seed_noise``,
    ``NoiseSource``), so each cell is the image ``generate`` gives for its seed alone. ``drives``:
    each checkpoint's drive (by the models' keys)."""
    check_cells(cells, models)
    flat = [c for row in cells for c in row]
    size = max(models[c.checkpoint].experiment.network.image_size for c in flat)
    out = np.zeros((len(flat), size, size, 3), np.uint8)
    for (name, config), where in grid_groups(cells).items():
        seeds = list(dict.fromkeys(flat[i].seed for i in where))
        drive = None if drives is None else drives[name]
        images = dict(zip(seeds, generate(models[name], seeds, config, drive=drive)))
        for i in where:
            out[i] = _resize(images[flat[i].seed], size)
    return out.reshape(len(cells), len(cells[0]), size, size, 3)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST))


# ----------------------------------------------------------------------------- branching at a step
@dataclass(frozen=True)
class Branch:
    """How a branch continues: its sampler, eta and the seed of its step noise."""

    sampler: str
    eta: float = 0.0
    noise_seed: int = 0

    def config(self, num_steps: int) -> SamplerConfig:
        return SamplerConfig(self.sampler, num_steps, self.eta)


@dataclass(frozen=True)
class BranchRun:
    """One run of a branched trajectory; tensors on the CPU, float32 [1 x C x H x W] each."""

    pred_x0: tuple[torch.Tensor, ...]  # the predicted x0 of every step (S); a branch's first k are the original's
    final: torch.Tensor  # the sample


@dataclass(frozen=True)
class BranchResult:
    original: BranchRun
    branches: tuple[BranchRun, ...]
    distances: np.ndarray  # [B x S]: RMS distance (model units) of each branch's predicted x0 from the original's


class _CountingNoise:
    """A NoiseSource that counts its draws (how far along its stream the run stands)."""

    def __init__(self, source: NoiseSource):
        self.source, self.draws = source, 0

    def __call__(self, shape: tuple[int, int, int]) -> torch.Tensor:
        self.draws += 1
        return self.source(shape)


def branch_trajectory(denoiser: Denoise, schedule: ScheduleConfig, x_T: torch.Tensor, original: SamplerConfig,
                      seed: int, k: int, branches: Sequence[Branch], drive: Drive | None = None) -> BranchResult:
    """Sample ``x_T`` [1 x C x H x W] with ``original`` (step noise of ``seed``), then, for each
    branch, continue from the original's x_t at step k (the input of step k, 0 <= k < S) on the
    same time grid with the branch's sampler and eta.

    A branch's step noise is the stream of its noise seed, drawn from where the original's stood
    at step k (as many draws skipped as the original made before it), so a branch with the
    original's settings and seed reproduces the original exactly, for every sampler. A multistep
    sampler (DPM-Solver++(2M)) starts its branch afresh, with a first-order step. The original's
    S steps, then each branch's S - k, run through ``drive``.
    """
    check_steps(original, schedule)
    S = original.num_steps
    if not 0 <= k < S:
        raise ValueError(f"branch step must be from 0 to {S - 1} (the original has {S} steps), got {k}")
    grid = time_grid(schedule, S)
    noise = _CountingNoise(NoiseSource([seed], x_T.device))
    x_k, draws_before_k, pred = None, 0, []
    for state in driven(original.spec.steps(denoiser, x_T, grid, original, noise), drive):
        if state.index == k - 1:
            draws_before_k = noise.draws
        if state.index == k:
            x_k = state.x_t
        pred.append(state.pred_x0.float().cpu())
    final = state.x_next.float().cpu()
    runs, distances = [], []
    for branch in branches:
        config = branch.config(S)
        stream = NoiseSource([branch.noise_seed], x_T.device)
        for _ in range(draws_before_k):
            stream(tuple(x_T.shape[1:]))
        states = list(driven(config.spec.steps(denoiser, x_k, grid.steps(k), config, stream), drive))
        run = BranchRun(tuple(pred[:k]) + tuple(s.pred_x0.float().cpu() for s in states),
                        states[-1].x_next.float().cpu())
        runs.append(run)
        distances.append([_rms(a, b) for a, b in zip(run.pred_x0, pred)])
    return BranchResult(BranchRun(tuple(pred), final), tuple(runs), np.array(distances, dtype=np.float64).reshape(
        len(branches), S))


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


@dataclass(frozen=True)
class BranchPictures:
    """A branched trajectory as pixels, for the app."""

    original: np.ndarray  # uint8 [S+1 x H x W x 3]: predicted x0 at every step, then the sample
    branches: np.ndarray  # uint8 [B x S+1 x H x W x 3], the same for each branch
    distances: np.ndarray  # [B x S]


def branch(model: LoadedModel, seed: int, original: SamplerConfig, k: int,
           branches: Sequence[Branch], drive: Drive | None = None) -> BranchPictures:
    """``branch_trajectory`` from the seed's starting noise on the model (float32 on its device)."""
    if not branches:
        raise ValueError("add at least one branch")
    x_T = seed_noise([seed], model.image_shape, model.device)
    result = branch_trajectory(runtime.denoiser(model), model.experiment.schedule, x_T, original, seed, k,
                               branches, drive)
    pixels = model.normalization.to_pixels

    def frames(run: BranchRun) -> np.ndarray:
        return np.concatenate([pixels(torch.cat(run.pred_x0)), pixels(run.final)])

    return BranchPictures(frames(result.original), np.stack([frames(r) for r in result.branches]), result.distances)


# ---------------------------------------------------------------------------- a seed's neighbourhood
def orthonormal_partner(z: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """The part of ``fresh`` orthogonal to ``z`` (per image of [N x ...]), scaled to the norm of z,
    in float64: the point a quarter turn from z on the great circle through z towards fresh
    (Gram-Schmidt)."""
    a, b = z.reshape(z.shape[0], -1).double(), fresh.reshape(fresh.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"noise shapes differ: {tuple(z.shape)} and {tuple(fresh.shape)}")
    perp = b - (a * b).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True) * a
    norm = perp.norm(dim=1, keepdim=True)
    if bool((norm < 1e-9 * a.norm(dim=1, keepdim=True)).any()):
        raise ValueError("the fresh noise is parallel to the seed's noise: choose another variation seed")
    return (perp / norm * a.norm(dim=1, keepdim=True)).reshape(z.shape)


def rotate_noise(z: torch.Tensor, fresh: torch.Tensor, angle: float) -> torch.Tensor:
    """z rotated by ``angle`` (radians) towards ``fresh`` on the sphere of z's radius:
    cos(angle) z + sin(angle) |z| u, u the unit direction of fresh orthogonal to z (a slerp along
    the great circle through z and fresh, keeping z's norm whatever fresh's norm). Angle 0 is z
    itself; pi/2 is orthogonal noise of the same norm, an unrelated image."""
    if not 0.0 <= angle <= math.pi:
        raise ValueError(f"rotation angle must be from 0 to pi, got {angle}")
    w = orthonormal_partner(z, fresh)
    return (math.cos(angle) * z.double() + math.sin(angle) * w).to(z.dtype)


def circle_point(z: torch.Tensor, w: torch.Tensor, phase: float) -> torch.Tensor:
    """The point at ``phase`` (turns) on the great circle cos(2 pi phase) z + sin(2 pi phase) w
    through z (phase 0) and its orthogonal partner w of the same norm."""
    angle = 2.0 * math.pi * phase
    return (math.cos(angle) * z.double() + math.sin(angle) * w.double()).to(z.dtype)


def circular_walk(z: torch.Tensor, fresh: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` evenly spaced points [F x ...] around the great circle through z [1 x ...] and
    towards ``fresh``: closed, so the frame after the last would be the first (a seamless loop),
    every point of z's norm."""
    if not isinstance(frames, int) or not 2 <= frames <= 1000:
        raise ValueError(f"frames must be a whole number from 2 to 1000, got {frames!r}")
    w = orthonormal_partner(z, fresh)
    return torch.cat([circle_point(z, w, f / frames) for f in range(frames)])


def decode(model: LoadedModel, latents: torch.Tensor, config: SamplerConfig, drive: Drive | None = None) -> np.ndarray:
    """Sample from given starting noise [N x C x H x W] with a deterministic sampler (the steps
    through ``drive``): uint8 [N x H x W x 3]."""
    if config.stochastic:
        raise ValueError(f"{config.name} with these settings draws noise at every step; choose a deterministic "
                         "sampler (DDIM at eta 0 or DPM-Solver++) so that nearby noise gives nearby images")
    out = []
    denoiser = runtime.denoiser(model)
    for i in range(0, len(latents), 16):
        steps = sample_steps(denoiser, model.experiment.schedule, latents[i:i + 16].to(model.device), config)
        out.append(model.normalization.to_pixels(sample(driven(steps, drive))))
    return np.concatenate(out)


def variations(model: LoadedModel, seed: int, variation_seeds: Sequence[int], strength: float,
               config: SamplerConfig, drive: Drive | None = None) -> np.ndarray:
    """Images whose starting noise is the seed's rotated towards each variation seed's noise by
    ``strength`` x 90 degrees (``rotate_noise``): uint8 [V x H x W x 3]."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be from 0 to 1, got {strength}")
    if not variation_seeds:
        raise ValueError("give at least one variation seed")
    z = seed_noise([seed], model.image_shape)
    fresh = seed_noise(variation_seeds, model.image_shape)
    latents = rotate_noise(z.expand_as(fresh), fresh, strength * math.pi / 2)
    return decode(model, latents, config, drive)


def walk_frames(model: LoadedModel, seed: int, towards: int, frames: int, config: SamplerConfig,
                drive: Drive | None = None) -> np.ndarray:
    """The images of a closed circular walk from the seed's noise through the noise of seed
    ``towards`` (made orthogonal) and back: uint8 [F x H x W x 3], a seamless loop."""
    if towards == seed:
        raise ValueError("the walk needs a second seed different from the first")
    z, fresh = seed_noise([seed], model.image_shape), seed_noise([towards], model.image_shape)
    return decode(model, circular_walk(z, fresh, frames), config, drive)
