"""The peer implementations we compare against, behind guarded imports.

- diffusers ``UNet2DModel`` (plain ``DownBlock2D``/``UpBlock2D`` levels; the mid block keeps its
  default attention) trained with MSE on the noise of a linear-beta DDPM schedule, and sampled
  with ``DDIMScheduler`` in the loop of ``DDIMPipeline``.
- denoising-diffusion-pytorch ``Unet`` inside ``GaussianDiffusion`` trained with its own loss
  (``diffusion(images)``; its defaults: v-prediction, sigmoid schedule, attention at every level).

A package that cannot be imported raises ``common.Unavailable`` with the reason; nothing here
installs anything (``pip install diffusers denoising-diffusion-pytorch``, or bench/run_gpu.sh from a
folder of wheels, ``.device-wheels/``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Unavailable


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken dependency failing its own way
        reason = str(e).splitlines()[0] if str(e) else ""
        raise Unavailable(f"{name}: {type(e).__name__}: {reason}"[:160]) from e


# --- diffusers -------------------------------------------------------------------------------
def diffusers_unet(size: int, widths: tuple[int, ...], layers_per_block: int) -> nn.Module:
    """``UNet2DModel`` with plain residual levels: eps(x_t [N x 3 x S x S], t [N]) in ``.sample``."""
    diffusers = _import("diffusers")
    levels = len(widths)
    return diffusers.UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=widths,
                                 layers_per_block=layers_per_block, down_block_types=("DownBlock2D",) * levels,
                                 up_block_types=("UpBlock2D",) * levels)


def diffusers_loss(unet: Callable, images: torch.Tensor, batch: int) -> Callable[[], torch.Tensor]:
    """DDPM training loss (Ho et al. 2020, Algorithm 1) on uint8 images [N x 3 x S x S] already on
    the device: random batch, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, MSE on eps."""
    device = images.device
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float().to(device)

    def loss() -> torch.Tensor:
        idx = torch.randint(len(images), (batch,), device=device)
        x0 = (images[idx].float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, len(abar), (batch,), device=device)
        eps = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
        return F.mse_loss(unet(x_t, t, return_dict=False)[0].float(), eps)

    return loss


def diffusers_ddim(unet: nn.Module, x_T: torch.Tensor, steps: int, bf16: bool) -> Callable[[], torch.Tensor]:
    """The loop of ``DDIMPipeline`` (eta = 0) from the noise x_T: a callable returning x_0."""
    diffusers = _import("diffusers")
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000)

    @torch.no_grad()
    def run() -> torch.Tensor:
        scheduler.set_timesteps(steps)
        x = x_T
        for t in scheduler.timesteps:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                model_output = unet(x, t).sample
            x = scheduler.step(model_output, t, x).prev_sample
        return x

    return run


# --- denoising-diffusion-pytorch -----------------------------------------------------------------
def ddp_diffusion(dim: int, dim_mults: tuple[int, ...], size: int) -> nn.Module:
    """``GaussianDiffusion(Unet(dim, dim_mults), image_size=size, timesteps=1000)``; ``.model`` is the
    network, calling it on images in [0, 1] returns the training loss."""
    ddp = _import("denoising_diffusion_pytorch")
    return ddp.GaussianDiffusion(ddp.Unet(dim=dim, dim_mults=dim_mults), image_size=size, timesteps=1000)


def ddp_loss(diffusion: nn.Module, images: torch.Tensor, batch: int) -> Callable[[], torch.Tensor]:
    """Its own loss on a random batch of uint8 images [N x 3 x S x S] already on the device."""
    def loss() -> torch.Tensor:
        idx = torch.randint(len(images), (batch,), device=images.device)
        return diffusion(images[idx].float() / 255.0)

    return loss


# --- a training step for both ------------------------------------------------------------------
def adamw_step(loss: Callable[[], torch.Tensor], params, device: torch.device) -> Callable[[], torch.Tensor]:
    """One optimisation step: loss under bf16 autocast (CUDA), backward, AdamW (fused on CUDA).
    No EMA and no gradient clipping (our step has both)."""
    cuda = device.type == "cuda"
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=cuda)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        return value.detach()

    return step
