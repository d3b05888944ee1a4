"""Editing a real image with a trained model: SDEdit (Meng et al. 2022, "SDEdit: Guided Image
Synthesis and Editing with Stochastic Differential Equations", Algorithm 1) and masked
regeneration by replacing the known region at every step (the "replacement" method of Song et
al. 2021, "Score-Based Generative Modeling through SDEs", appendix I.2; RePaint without its
resampling). Tensors are [N x C x H x W] in the network's units; no streamlit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import diffusion as D
from . import runtime
from .checkpoint import LoadedModel
from .generate import Drive, driven
from .samplers import Denoise, NoiseSource, SamplerConfig, check_steps, seed_noise
from .schedules import ScheduleConfig, time_grid

KNOWN_NOISE_OFFSET = 0x4B4E  # the known region's noise stream, apart from the seed's starting and step noise


def start_step(num_steps: int, strength: float) -> int:
    """The step of an S-step grid at which an edit of ``strength`` starts: S - round(strength S).
    Strength 0 starts at the clean end (nothing to do), 1 at the noisiest level of the grid."""
    if not 0.0 <= strength <= 1.0 or math.isnan(strength):
        raise ValueError(f"strength must be from 0 to 1, got {strength}")
    return num_steps - round(strength * num_steps)


def sdedit(denoiser: Denoise, schedule: ScheduleConfig, x0: torch.Tensor, config: SamplerConfig, strength: float,
           eps: torch.Tensor, step_noise: NoiseSource | None = None, regenerate: torch.Tensor | None = None,
           known_noise: NoiseSource | None = None, drive: Drive | None = None) -> torch.Tensor:
    """SDEdit of x0 [N x C x H x W]: noise it to the level of grid step k = ``start_step`` with
    ``eps`` (x_k = alpha_k x0 + sigma_k eps, q(x_t | x_0), Ho et al. 2020, eq. 4), then denoise
    with the sampler ``config`` over steps k..S-1 of its grid. Strength 0 returns x0.

    ``regenerate`` [N or 1 x 1 x H x W] (1 where the model draws, 0 where x0 is known): after
    every step the known region of x_next is replaced by x0 noised to x_next's level with fresh
    noise from ``known_noise``, so the last step (clean level) keeps x0 there exactly. Each step
    then runs as its own one-step walk (the samplers' generators own their loop), so a multistep
    sampler (DPM-Solver++(2M)) takes first-order steps; DDIM and DDPM are unchanged by this.
    Every step runs through ``drive``.
    """
    check_steps(config, schedule)
    S = config.num_steps
    k = start_step(S, strength)
    if k == S:
        return x0.clone()
    if config.stochastic and step_noise is None:
        raise ValueError(f"{config.name} with these settings is stochastic: pass a NoiseSource")
    grid = time_grid(schedule, S).steps(k)
    abar = float(grid.alphas_cumprod[0])
    x = D.q_sample(x0, math.sqrt(abar), math.sqrt(1.0 - abar), eps.to(x0.device))  # Algorithm 1, line 2
    if regenerate is None:
        for state in driven(config.spec.steps(denoiser, x, grid, config, step_noise), drive):
            x = state.x_next
        return x
    if known_noise is None:
        raise ValueError("masked regeneration needs a NoiseSource for the known region")
    keep = 1.0 - regenerate.to(x0.device, x0.dtype)
    for i in range(grid.num_steps):
        one = grid.steps(i, i + 1)
        for state in driven(config.spec.steps(denoiser, x, one, config, step_noise), drive):
            x = state.x_next
        abar_next = float(grid.alphas_cumprod[i + 1])
        known = D.q_sample(x0, math.sqrt(abar_next), math.sqrt(1.0 - abar_next), known_noise(tuple(x0.shape[1:])))
        x = keep * known + (1.0 - keep) * x
    return x


def rectangle_mask(size: int, left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """A bool mask [size x size], True inside the rectangle given as fractions of the side
    (0 <= left < right <= 1, 0 <= top < bottom <= 1); at least one pixel."""
    if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
        raise ValueError(f"the region must lie inside the image with left < right and top < bottom, got "
                         f"left {left}, top {top}, right {right}, bottom {bottom}")
    mask = np.zeros((size, size), bool)
    x0, y0 = int(math.floor(left * size)), int(math.floor(top * size))
    x1, y1 = max(x0 + 1, int(math.ceil(right * size))), max(y0 + 1, int(math.ceil(bottom * size)))
    mask[y0:y1, x0:x1] = True
    return mask


def edit_image(model: LoadedModel, image: np.ndarray, config: SamplerConfig, strength: float, seed: int,
               regenerate: np.ndarray | None = None, drive: Drive | None = None) -> np.ndarray:
    """SDEdit of one uint8 image [S x S x 3] at the model's size S (``sdedit``), with the seed's
    starting noise as eps and its step noise; ``regenerate`` a bool mask [S x S] (True: the model
    redraws it, the rest is kept); the steps through ``drive``. Returns uint8 [S x S x 3];
    strength 0 gives the image back."""
    size = model.experiment.network.image_size
    if image.dtype != np.uint8 or image.shape != (size, size, 3):
        raise ValueError(f"this model edits uint8 {size}x{size} RGB images, got {image.dtype} {image.shape}")
    if regenerate is not None and regenerate.shape != (size, size):
        raise ValueError(f"the mask must be {size}x{size}, got {regenerate.shape}")
    x0 = model.normalization.to_model(torch.from_numpy(image).permute(2, 0, 1)[None].to(model.device))
    mask = None if regenerate is None else torch.from_numpy(regenerate.astype(np.float32))[None, None]
    out = sdedit(runtime.denoiser(model), model.experiment.schedule, x0, config, strength,
                 seed_noise([seed], model.image_shape, model.device), NoiseSource([seed], model.device),
                 mask, NoiseSource([seed + KNOWN_NOISE_OFFSET], model.device), drive)
    return model.normalization.to_pixels(out)[0]


def edit_evaluations(config: SamplerConfig, strength: float) -> int:
    """Network evaluations of an edit: the steps from its start step on."""
    return config.num_steps - start_step(config.num_steps, strength)
