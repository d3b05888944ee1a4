"""What users do with a trained model: sample a grid, record a trajectory, interpolate between
seeds, invert an image. Shared by the CLI and the app; returns uint8 arrays [N x H x W x 3]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import runtime
from .checkpoint import LoadedModel
from .guidance import Guidance
from .interpolation import Method, interpolate
from .model import AUTO, Denoiser
from .samplers import (REGISTRY, NoiseSource, SamplerConfig, StepState, check_steps, ddim_invert_steps, sample,
                       sample_steps, seed_noise)

MAX_BATCH_PIXELS = 64 * 128 * 128  # images per network call are chunked to bound memory
FUSED_MIN_CALLS = 1_000  # network calls from which generate() runs the fused kernels on CUDA (see compile_pays)
COMPILE_MIN_CALLS = 10_000  # ... or, where they cannot run, torch.compile

# How a caller drives a step generator: it receives each sampler loop and yields its states (the
# app takes a lock per step, shows progress and stops a job whose visitor left); None drains it as is.
Drive = Callable[[Iterator[StepState]], Iterator[StepState]]


def driven(steps: Iterator[StepState], drive: Drive | None) -> Iterator[StepState]:
    """``steps`` through ``drive`` (as they are when None): every core loop that runs a model goes
    through here, so a driven run gives the same states, bit for bit, as an undriven one."""
    return steps if drive is None else drive(steps)


def _chunk_size(model: LoadedModel) -> int:
    """Images per network call: MAX_BATCH_PIXELS worth of the model's resolution."""
    return max(1, MAX_BATCH_PIXELS // model.experiment.network.image_size ** 2)


def check_sampler(model: LoadedModel, config: SamplerConfig) -> None:
    """Raise ValueError if the step count is beyond what the sampler allows on the model's schedule."""
    check_steps(config, model.experiment.schedule)


def step_states(model: LoadedModel, seeds: Sequence[int], config: SamplerConfig,
                autocast: torch.dtype | str | None = AUTO, per_image_noise: bool = True,
                denoiser: Denoiser | None = None, guidance: Guidance | None = None) -> Iterator[StepState]:
    """The sampler's step generator for these seeds on the model's device (see NoiseSource for
    ``per_image_noise``), with ``denoiser`` if given (else the model's, under ``autocast``, guided
    by ``guidance`` if given)."""
    if not seeds:
        raise ValueError("give at least one seed")
    x_T = seed_noise(seeds, model.image_shape, model.device)
    noise = NoiseSource(seeds, model.device, per_image_noise)
    denoiser = denoiser or runtime.denoiser(model, autocast, guidance=guidance)
    return sample_steps(denoiser, model.experiment.schedule, x_T, config, noise)


def compile_pays(model: LoadedModel, num_images: int, config: SamplerConfig,
                 autocast: torch.dtype | str | None = AUTO) -> bool:
    """Whether a compiled network is worth it for sampling ``num_images`` images: on CUDA, when the
    job makes at least FUSED_MIN_CALLS network calls (batches x steps) where the fused kernels run,
    or COMPILE_MIN_CALLS where torch.compile would be used instead. Measured on one H100 (batches of
    256, 50-step DDIM; docs/performance.md):

    - fused kernels: 2.4 to 8.2 ms per call against 8.0 to 20.9 ms eagerly for the
      reference and the shipped networks (5.7 to 12.7 ms saved per call); the first call of a
      process costs about 2 s once Triton's disk cache holds the kernels, so they pay from about
      350 calls; the very first use on a machine compiles them (20-30 s), which a job of 2,000 to
      5,000 calls repays. The threshold stays at 1,000, between those two break-evens.
    - torch.compile (ddpm_01_narrow): 10.5 ms eagerly against 5.6 ms compiled, and compiling costs
      about 29 s for the first batch shape and 13 s for a second, in every process: it pays from
      about 8,600 calls, a 1000-step DDPM evaluation or a FID-50k run, never a grid."""
    if model.device.type != "cuda":
        return False
    calls = -(-num_images // _chunk_size(model)) * config.num_steps
    return calls >= (FUSED_MIN_CALLS if runtime.runs_fused(model, autocast) else COMPILE_MIN_CALLS)


def generate(model: LoadedModel, seeds: Sequence[int], config: SamplerConfig,
             autocast: torch.dtype | str | None = AUTO, per_image_noise: bool = True,
             compile: bool | None = None, guidance: Guidance | None = None,
             drive: Drive | None = None) -> np.ndarray:
    """Samples for ``seeds`` as uint8 [N x H x W x 3]; large requests run in chunks, each chunk's
    steps through ``drive``. ``compile``: a compiled network (``runtime.denoiser``); None decides
    by ``compile_pays``. ``guidance``: autoguided by a checked guide (``guidance.guidance``)."""
    if len(seeds) == 0:
        raise ValueError("give at least one seed")
    check_sampler(model, config)
    if compile is None:
        guided = guidance is not None and guidance.active  # two network calls per step
        compile = compile_pays(model, len(seeds) * (2 if guided else 1), config, autocast)
    denoiser = runtime.denoiser(model, autocast, compile, guidance)
    chunk = _chunk_size(model)
    out = []
    for i in range(0, len(seeds), chunk):
        x0 = sample(driven(step_states(model, list(seeds[i:i + chunk]), config, per_image_noise=per_image_noise,
                                       denoiser=denoiser), drive))
        out.append(model.normalization.to_pixels(x0))
    return np.concatenate(out)


@dataclass(frozen=True)
class Trajectory:
    """Every step of one seed's denoising, as pixels, plus the rates: what the app scrubs."""

    x_t: np.ndarray  # uint8 [S+1 x H x W x 3]: the latent before each step, then the final image
    pred_x0: np.ndarray  # uint8 [S x H x W x 3]
    times: np.ndarray  # [S]
    signal_rates: np.ndarray  # [S]
    noise_rates: np.ndarray  # [S]


def latent_to_pixels(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """Show a noisy latent x_t: map it through the data normalisation like an image. Pure noise
    then looks like grey static, and the image emerges as the signal rate grows."""
    return model.normalization.to_pixels(x)


def trajectory(model: LoadedModel, seed: int, config: SamplerConfig, guidance: Guidance | None = None,
               drive: Drive | None = None) -> Trajectory:
    """Every step of one seed's denoising (the steps through ``drive``)."""
    xs, x0s, times, signal, noise = [], [], [], [], []
    state = None
    for state in driven(step_states(model, [seed], config, guidance=guidance), drive):
        xs.append(latent_to_pixels(model, state.x_t)[0])
        x0s.append(model.normalization.to_pixels(state.pred_x0)[0])
        times.append(state.t)
        signal.append(state.signal_rate)
        noise.append(state.noise_rate)
    xs.append(model.normalization.to_pixels(state.x_next)[0])
    return Trajectory(np.stack(xs), np.stack(x0s), np.array(times), np.array(signal), np.array(noise))


def interpolation_frames(model: LoadedModel, seeds: Sequence[int], frames: int, method: Method,
                         config: SamplerConfig, keys: torch.Tensor | None = None,
                         autocast: torch.dtype | str | None = AUTO, guidance: Guidance | None = None,
                         drive: Drive | None = None) -> np.ndarray:
    """Decode ``frames`` latents on the path through the seeds' noise (or given ``keys``
    [K x C x H x W]) with a deterministic sampler, autoguided by ``guidance`` if given (the steps
    through ``drive``).
    Returns uint8 [frames x H x W x 3]."""
    if config.stochastic:
        usable = ", ".join(f"{s.name} (eta 0)" if s.uses_eta else s.name for s in REGISTRY.values() if not s.stochastic)
        raise ValueError(f"interpolation needs a deterministic sampler: {usable}")
    if keys is None:
        if len(seeds) < 2:
            raise ValueError("interpolation needs at least two seeds")
        keys = seed_noise(seeds, model.image_shape)
    path = interpolate(keys.cpu(), frames, method).to(model.device)
    chunk = _chunk_size(model)
    denoiser = runtime.denoiser(model, autocast, guidance=guidance)
    out = []
    for i in range(0, len(path), chunk):
        steps = sample_steps(denoiser, model.experiment.schedule, path[i:i + chunk], config)
        out.append(model.normalization.to_pixels(sample(driven(steps, drive))))
    return np.concatenate(out)


def invert(model: LoadedModel, images: np.ndarray, num_steps: int,
           fixed_point_iterations: int = 3, drive: Drive | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """DDIM-invert uint8 images [N x H x W x 3] to their starting noise [N x C x H x W] and
    return it with the DDIM (eta 0) reconstruction from that noise, uint8. Costs
    num_steps * (1 + fixed_point_iterations) + num_steps network calls, in 2 * num_steps steps
    (the inversion's, then the reconstruction's), each through ``drive``."""
    config = SamplerConfig("ddim", num_steps, 0.0)
    check_sampler(model, config)
    size = model.experiment.network.image_size
    if images.shape[1:] != (size, size, 3):
        raise ValueError(f"this model takes {size}x{size} images, got {images.shape[1]}x{images.shape[2]}")
    x0 = model.normalization.to_model(torch.from_numpy(images).permute(0, 3, 1, 2).to(model.device))
    # float32 everywhere: inversion's fixed-point refinement amplifies bf16 error
    denoiser = runtime.denoiser(model, None)
    x_T = sample(driven(ddim_invert_steps(denoiser, model.experiment.schedule, x0, num_steps,
                                          fixed_point_iterations), drive))
    recon = sample(driven(sample_steps(denoiser, model.experiment.schedule, x_T, config), drive))
    return x_T, model.normalization.to_pixels(recon)
