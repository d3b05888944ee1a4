"""What a page asks the caches to compute: frozen records, validated once, when they are built.
(no streamlit)

A page (with ``widgets``) turns its inputs into one of these records through a builder below,
which raises ``ValueError`` with a message for the user; a record that exists is valid. The
``st.cache_data`` functions of ``cache`` take the record itself as their key (Streamlit hashes a
dataclass by its fields; equal requests are equal keys), and ``widgets.ready`` remembers the
record that a button approved. Nothing is turned into a tuple and back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from diffusion_core.analysis import inversion_evaluations
from diffusion_core.guidance import MAX_GUIDANCE, NO_GUIDANCE, check_guide, check_weight
from diffusion_core.samplers import SamplerConfig, check_steps

from . import catalog, plans

if TYPE_CHECKING:
    from diffusion_core.checkpoint import LoadedModel


@dataclass(frozen=True)
class ModelRef:
    """What identifies a loaded model: its description, the state of its files, the device."""

    path: str  # the resolved .json description
    stamps: tuple  # (name, mtime_ns, size) of the description and its weight files
    device: str


def model_ref(entry: catalog.Entry, device: str) -> ModelRef:
    files = catalog.checkpoint_files(entry.path, entry.description)
    return ModelRef(str(entry.path.resolve()), catalog.file_stamps(files), device)


@dataclass(frozen=True)
class GridRequest:
    """Samples of ``seeds`` (one image each) from one model with one sampler; with a ``guide``,
    autoguided at weight ``guidance`` (``diffusion_core.guidance``)."""

    model: ModelRef
    seeds: tuple[int, ...]
    sampler: SamplerConfig
    guide: ModelRef | None = None  # set only with guidance != 1 (w = 1 is the model alone)
    guidance: float = NO_GUIDANCE

    @property
    def evaluations(self) -> int:
        """Network evaluations of one image each (images x steps) of each model, for time estimates."""
        return len(self.seeds) * self.sampler.num_steps


@dataclass(frozen=True)
class TrajectoryRequest:
    """Every step of one seed's denoising."""

    model: ModelRef
    seed: int
    sampler: SamplerConfig


@dataclass(frozen=True)
class Images:
    """uint8 images [N x H x W x 3] as an immutable value (their bytes and shape), so that a
    request holding them can be compared and hashed."""

    pixels: bytes
    shape: tuple[int, int, int, int]

    @classmethod
    def of(cls, images: np.ndarray) -> Images:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N x H x W x 3], got {images.dtype} {images.shape}")
        return cls(np.ascontiguousarray(images).tobytes(), tuple(images.shape))

    def array(self) -> np.ndarray:
        """The images, uint8 [N x H x W x 3] (a new, writable array)."""
        return np.frombuffer(self.pixels, np.uint8).reshape(self.shape).copy()


INVERSION_ITERATIONS = 3  # fixed-point refinements per inversion step (generate.invert's default)


@dataclass(frozen=True)
class InversionRequest:
    """The DDIM-inverted noise of ``images`` (and their reconstructions), ``num_steps`` steps,
    ``INVERSION_ITERATIONS`` fixed-point refinements each."""

    model: ModelRef
    images: Images
    num_steps: int

    @property
    def evaluations(self) -> int:
        """Network calls of one image each (``analysis.inversion_evaluations``), for the estimate."""
        return self.images.shape[0] * inversion_evaluations(self.num_steps, INVERSION_ITERATIONS)

    @property
    def image_steps(self) -> int:
        """Images x sampler steps (the inversion's, then the reconstruction's): the progress bar's count."""
        return self.images.shape[0] * 2 * self.num_steps


@dataclass(frozen=True)
class InterpolationRequest:
    """Frames along the path through the noise of ``seeds`` or, with ``start``, through the
    inverted noise of uploaded images; decoded with a deterministic ``sampler``."""

    model: ModelRef
    frames: int
    sampler: SamplerConfig
    seeds: tuple[int, ...] = ()
    start: InversionRequest | None = None


# ---------------------------------------------------------------------------------------- builders
def grid(ref: ModelRef, model: LoadedModel, first_seed: int, count: int, sampler: SamplerConfig) -> GridRequest:
    """``count`` images from seed ``first_seed`` on: a grid that fits memory, steps within the
    sampler's limit on the model's schedule."""
    check_steps(sampler, model.experiment.schedule)
    plans.check_grid(count, model.experiment.network.image_size)
    return GridRequest(ref, tuple(plans.seed_range(first_seed, count)), sampler)


def sweep(ref: ModelRef, model: LoadedModel, first_seed: int, count: int, steps: Sequence[int],
          sampler: str = "ddim") -> tuple[GridRequest, ...]:
    """One grid per step count (ascending), the same seeds in each: a step sweep whose cells
    together fit one grid."""
    if not steps:
        raise ValueError("choose at least one step count")
    plans.check_grid(count * len(steps), model.experiment.network.image_size)
    return tuple(grid(ref, model, first_seed, count, SamplerConfig(sampler, int(s))) for s in sorted(steps))


MAX_GUIDANCE_ROWS = 8  # weights in one guided grid, a row each


def parse_weights(text: str) -> tuple[float, ...]:
    """"2" or "1, 1.5, 2" (commas or spaces) -> guidance weights, each checked, at most
    MAX_GUIDANCE_ROWS, repeats dropped."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise ValueError("give a guidance weight, e.g. 2, or several, e.g. 1, 1.5, 2")
    weights = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a guidance weight (a number from 0 to {MAX_GUIDANCE:g})") from None
        weights.append(check_weight(value))
    weights = tuple(dict.fromkeys(weights))
    if len(weights) > MAX_GUIDANCE_ROWS:
        raise ValueError(f"at most {MAX_GUIDANCE_ROWS} guidance weights (a grid row each), got {len(weights)}")
    return weights


def guided_rows(request: GridRequest, model: LoadedModel, guide_ref: ModelRef, guide: LoadedModel,
                weights: Sequence[float]) -> tuple[GridRequest, ...]:
    """One grid per weight (the same seeds and sampler), the rows of a guided grid: ``request``
    autoguided by ``guide`` (which must fit ``model``: ``check_guide``); w = 1 is ``request`` as it
    is. All rows together must fit one grid."""
    check_guide(model, guide)
    plans.check_grid(len(request.seeds) * len(weights), model.experiment.network.image_size)
    return tuple(request if w == NO_GUIDANCE else dataclasses.replace(request, guide=guide_ref, guidance=w)
                 for w in (check_weight(w) for w in weights))


def trajectory(ref: ModelRef, model: LoadedModel, seed: int, sampler: SamplerConfig) -> TrajectoryRequest:
    """One seed's trajectory, short enough to keep every step's pictures in memory."""
    check_steps(sampler, model.experiment.schedule)
    plans.check_trajectory(sampler.num_steps, model.experiment.network.image_size)
    return TrajectoryRequest(ref, plans.seed_range(seed, 1)[0], sampler)


def inversion(ref: ModelRef, model: LoadedModel, images: np.ndarray, num_steps: int) -> InversionRequest:
    """DDIM inversion of uint8 images [N x S x S x 3] at the model's size S."""
    check_steps(SamplerConfig("ddim", num_steps), model.experiment.schedule)
    size = model.experiment.network.image_size
    if images.shape[1:] != (size, size, 3):
        raise ValueError(f"this model takes {size}x{size} images, got {images.shape[1]}x{images.shape[2]}")
    return InversionRequest(ref, Images.of(images), num_steps)


def interpolation(ref: ModelRef, model: LoadedModel, frames: int, sampler: SamplerConfig,
                  seeds: Sequence[int] = (), start: InversionRequest | None = None) -> InterpolationRequest:
    """Interpolation through two or more seeds' noise, or (``start``) through inverted images."""
    if sampler.stochastic:
        raise ValueError(f"interpolation needs a deterministic sampler; {sampler.name} with these settings is not")
    check_steps(sampler, model.experiment.schedule)
    if not 2 <= frames <= plans.MAX_FRAMES:
        raise ValueError(f"choose 2 to {plans.MAX_FRAMES} frames, got {frames}")
    if start is None and len(seeds) < 2:
        raise ValueError("give at least two seeds, e.g. 3, 17")
    return InterpolationRequest(ref, frames, sampler, () if start is not None else tuple(seeds), start)
