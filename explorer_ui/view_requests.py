"""What the view pages (XY grid, Branch, Neighbourhood, Edit, Geometry, Inversion) ask the caches to compute: frozen
records validated once, when they are built, like ``requests`` (no streamlit).

A builder raises ``ValueError`` with a message for the user; a record that exists is valid, and
its ``evaluations`` (images x network calls) feed the time estimate before anything slow runs;
they are also the image-steps (images x sampler steps) that its progress bar counts, one network
call a step, except for the inversion's (``image_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from diffusion_core import analysis as A
from diffusion_core import edit as E
from diffusion_core import views as V
from diffusion_core.samplers import SamplerConfig, check_steps

from . import plans
from .requests import Images, ModelRef

if TYPE_CHECKING:
    from diffusion_core.checkpoint import LoadedModel

MAX_BRANCHES = 4
MAX_VARIATIONS = 16


def _one_seed(seed: int) -> int:
    return plans.seed_range(int(seed), 1)[0]


# ------------------------------------------------------------------------------------------ XY grid
@dataclass(frozen=True)
class XYGridRequest:
    """A grid over two settings: its cells [R x C] and the models (by label) they use."""

    models: tuple[tuple[str, ModelRef], ...]  # (checkpoint label, its model) for every label of the cells
    rows: V.Axis
    cols: V.Axis
    cells: tuple[tuple[V.Cell, ...], ...]

    @property
    def evaluations(self) -> int:
        return V.grid_steps(self.cells)

    def evaluations_of(self, label: str) -> int:
        return V.grid_steps(self.cells, label)


def xy_grid(loaded: Mapping[str, tuple[ModelRef, LoadedModel]], base: V.Cell, rows: V.Axis,
            cols: V.Axis) -> XYGridRequest:
    """The grid of ``base`` over ``rows`` x ``cols``; every cell's steps within its sampler's limit
    on its checkpoint's schedule, the whole grid within what one grid may hold."""
    cells = V.grid_cells(base, rows, cols)
    used = dict.fromkeys(c.checkpoint for row in cells for c in row)
    V.check_cells(cells, {label: loaded[label][1] for label in used if label in loaded})
    for row in cells:
        for c in row:
            _one_seed(c.seed)
    size = max(loaded[label][1].experiment.network.image_size for label in used)
    plans.check_grid(len(rows.values) * len(cols.values), size)
    return XYGridRequest(tuple((label, loaded[label][0]) for label in used), rows, cols, cells)


# ------------------------------------------------------------------------------------------- Branch
@dataclass(frozen=True)
class BranchRequest:
    """One seed's trajectory with ``original``, branched at step ``k`` into ``branches``."""

    model: ModelRef
    seed: int
    original: SamplerConfig
    k: int
    branches: tuple[V.Branch, ...]

    @property
    def evaluations(self) -> int:
        return self.original.num_steps + len(self.branches) * (self.original.num_steps - self.k)


def branch(ref: ModelRef, model: LoadedModel, seed: int, original: SamplerConfig, k: int,
           branches: Sequence[V.Branch]) -> BranchRequest:
    check_steps(original, model.experiment.schedule)
    if not 1 <= len(branches) <= MAX_BRANCHES:
        raise ValueError(f"choose 1 to {MAX_BRANCHES} branches, got {len(branches)}")
    if not 0 <= k < original.num_steps:
        raise ValueError(f"branch step must be from 0 to {original.num_steps - 1}, got {k}")
    for b in branches:
        b.config(original.num_steps)  # SamplerConfig checks sampler and eta
        _one_seed(b.noise_seed)
    plans.check_trajectory((len(branches) + 1) * original.num_steps, model.experiment.network.image_size)
    return BranchRequest(ref, _one_seed(seed), original, int(k), tuple(branches))


# ------------------------------------------------------------------------------------ Neighbourhood
@dataclass(frozen=True)
class VariationsRequest:
    """The seed's noise rotated by ``strength`` x 90 degrees towards each variation seed's noise."""

    model: ModelRef
    seed: int
    variation_seeds: tuple[int, ...]
    strength: float
    sampler: SamplerConfig

    @property
    def evaluations(self) -> int:
        return (1 + len(self.variation_seeds)) * self.sampler.num_steps  # the seed's own image, then its variations


@dataclass(frozen=True)
class WalkRequest:
    """A closed circular walk from the seed's noise through seed ``towards``'s (made orthogonal)."""

    model: ModelRef
    seed: int
    towards: int
    frames: int
    sampler: SamplerConfig

    @property
    def evaluations(self) -> int:
        return self.frames * self.sampler.num_steps


def _deterministic(sampler: SamplerConfig, model: LoadedModel) -> None:
    if sampler.stochastic:
        raise ValueError(f"{sampler.name} with these settings draws noise at every step; nearby noise gives "
                         "nearby images only with a deterministic sampler (DDIM at eta 0, DPM-Solver++)")
    check_steps(sampler, model.experiment.schedule)


def variations(ref: ModelRef, model: LoadedModel, seed: int, first_variation: int, count: int, strength: float,
               sampler: SamplerConfig) -> VariationsRequest:
    _deterministic(sampler, model)
    if not 1 <= count <= MAX_VARIATIONS:
        raise ValueError(f"choose 1 to {MAX_VARIATIONS} variations, got {count}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be from 0 to 1, got {strength}")
    seeds = tuple(plans.seed_range(first_variation, count))
    if seed in seeds:
        raise ValueError(f"the variation seeds ({seeds[0]}-{seeds[-1]}) include the seed {seed} itself; "
                         "start them elsewhere")
    plans.check_grid(count, model.experiment.network.image_size)
    return VariationsRequest(ref, _one_seed(seed), seeds, float(strength), sampler)


def walk(ref: ModelRef, model: LoadedModel, seed: int, towards: int, frames: int,
         sampler: SamplerConfig) -> WalkRequest:
    _deterministic(sampler, model)
    if not 2 <= frames <= plans.MAX_FRAMES:
        raise ValueError(f"choose 2 to {plans.MAX_FRAMES} frames, got {frames}")
    if towards == seed:
        raise ValueError("the walk passes through a second seed: choose one different from the first")
    return WalkRequest(ref, _one_seed(seed), _one_seed(towards), int(frames), sampler)


# --------------------------------------------------------------------------------------------- Edit
@dataclass(frozen=True)
class EditRequest:
    """SDEdit of one image; with ``region`` (left, top, right, bottom as fractions of the side)
    only that rectangle is redrawn and the rest kept."""

    model: ModelRef
    image: Images  # one uint8 image [1 x S x S x 3] at the model's size
    sampler: SamplerConfig
    strength: float
    seed: int
    region: tuple[float, float, float, float] | None = None

    @property
    def evaluations(self) -> int:
        return E.edit_evaluations(self.sampler, self.strength)


def edit(ref: ModelRef, model: LoadedModel, image, sampler: SamplerConfig, strength: float, seed: int,
         region: tuple[float, float, float, float] | None = None) -> EditRequest:
    """``image``: uint8 [S x S x 3] at the model's size S (``data.decode_image`` makes it)."""
    check_steps(sampler, model.experiment.schedule)
    E.start_step(sampler.num_steps, strength)  # checks the strength
    size = model.experiment.network.image_size
    if image.shape != (size, size, 3):
        raise ValueError(f"this model takes {size}x{size} images, got {image.shape[0]}x{image.shape[1]}")
    if region is not None:
        E.rectangle_mask(size, *region)  # checks the rectangle
        region = tuple(float(v) for v in region)
    return EditRequest(ref, Images.of(image[None]), sampler, float(strength), _one_seed(seed), region)


# ----------------------------------------------------------------------------------------- Geometry
@dataclass(frozen=True)
class GeometryRequest:
    """Several seeds' trajectories with one sampler, every step kept, for their PCA paths."""

    model: ModelRef
    seeds: tuple[int, ...]
    sampler: SamplerConfig

    @property
    def evaluations(self) -> int:
        return len(self.seeds) * self.sampler.num_steps


def geometry(ref: ModelRef, model: LoadedModel, seeds: Sequence[int], sampler: SamplerConfig) -> GeometryRequest:
    check_steps(sampler, model.experiment.schedule)
    if sampler.num_steps < 2:
        raise ValueError("trajectory geometry needs at least 2 steps")
    if not seeds:
        raise ValueError("give at least one seed")
    plans.check_trajectory(len(seeds) * (sampler.num_steps + 1) - 1, model.experiment.network.image_size)
    return GeometryRequest(ref, tuple(int(s) for s in seeds), sampler)


# ---------------------------------------------------------------------------------------- Inversion
INVERSION_STEPS = (5, 10, 20, 50, 100)
MAX_INVERSION_IMAGES = 8


@dataclass(frozen=True)
class InversionQualityRequest:
    """DDIM inversion and reconstruction of ``images`` at each step count and refinement."""

    model: ModelRef
    images: Images
    step_counts: tuple[int, ...]
    refinements: tuple[int, ...]

    @property
    def evaluations(self) -> int:
        return self.images.shape[0] * sum(A.inversion_evaluations(s, r) for s in self.step_counts
                                          for r in self.refinements)

    @property
    def image_steps(self) -> int:
        """Images x sampler steps: each row inverts in ``steps`` steps, then decodes in as many."""
        return self.images.shape[0] * len(self.refinements) * sum(2 * s for s in self.step_counts)


def inversion_quality(ref: ModelRef, model: LoadedModel, images, step_counts: Sequence[int],
                      refinement: int) -> InversionQualityRequest:
    """``images`` uint8 [N x S x S x 3] at the model's size; ``refinement`` > 0 adds rows with that
    many fixed-point iterations beside the plain inversion."""
    if not step_counts:
        raise ValueError("choose at least one step count")
    for s in step_counts:
        check_steps(SamplerConfig("ddim", int(s)), model.experiment.schedule)
    if not 0 <= refinement <= 10:
        raise ValueError(f"fixed-point iterations must be from 0 to 10, got {refinement}")
    size = model.experiment.network.image_size
    if not 1 <= len(images) <= MAX_INVERSION_IMAGES:
        raise ValueError(f"choose 1 to {MAX_INVERSION_IMAGES} images, got {len(images)}")
    if images.shape[1:] != (size, size, 3):
        raise ValueError(f"this model takes {size}x{size} images, got {images.shape[1]}x{images.shape[2]}")
    return InversionQualityRequest(ref, Images.of(images), tuple(sorted({int(s) for s in step_counts})),
                                   (0,) if refinement == 0 else (0, int(refinement)))
