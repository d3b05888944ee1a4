"""How a loaded model runs when it samples: the one place that chooses between

- folded:   the network with each BatchNorm folded into the convolution after it
            (``folding.fold_batchnorm``); what a ``Denoiser`` runs by default, eagerly;
- compiled: the folded network through ``torch.compile`` (``Denoiser(compile=True)``);
- fused:    the fused Triton sampling network replayed as CUDA graphs (``fused.unet``), on CUDA
            for bf16 sampling, where it can be built;
- eager:    the network as it is, for a kind of network that does not fold.

``checkpoint.py`` only reads files into a ``LoadedModel``; everything that depends on the
accelerator is decided here. Triton is imported only when a model on CUDA is asked for its fused
network, so importing this module (and ``generate``) costs no Triton.

The folded and fused networks are built once per network and shared (the app shares one
``LoadedModel`` among its sessions' threads): built under a lock, kept while the network lives.
"""

from __future__ import annotations

import sys
import threading
import weakref

import torch
from torch import nn

from .checkpoint import LoadedModel
from .folding import fold_batchnorm
from .guidance import Guidance, GuidedDenoiser
from .model import AUTO, Denoiser, module_device, sampling_autocast
from .unet import UNet

_BUILD_LOCK = threading.RLock()
_FOLDED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_FUSED: weakref.WeakKeyDictionary[nn.Module, nn.Module | None] = weakref.WeakKeyDictionary()


def sampling_network(model: LoadedModel) -> nn.Module:
    """The network a Denoiser runs: a U-Net with its BatchNorm folded into the convolutions
    (diffusion_core.folding; the same function, one pass fewer per residual block: 50-step DDIM of
    256 images on an H100, 9.00 -> 8.07 ms per network call eagerly, 4.91 -> 4.61 ms compiled),
    any other kind of network as it is. Built once per network."""
    network = model.network
    if not isinstance(network, UNet):
        return network
    with _BUILD_LOCK:
        folded = _FOLDED.get(network)
        if folded is None:
            folded = _FOLDED[network] = fold_batchnorm(network)
        return folded


def fused_available(network: nn.Module) -> bool:
    """Whether ``network`` can sample through the fused kernels where it is (a U-Net on a CUDA
    device with bf16 tensor cores, Triton installed, channel counts multiples of 16, not switched off
    by DIFFUSION_EXPLORER_FUSED=0). Imports Triton only for a U-Net on CUDA."""
    if not isinstance(network, UNet) or module_device(network).type != "cuda":
        return False
    from .fused.unet import fused_available as available

    return available(network)


def runs_fused(model: LoadedModel, autocast: torch.dtype | str | None = AUTO) -> bool:
    """Whether a compiled Denoiser (``denoiser(model, autocast, compile=True)``) runs the fused
    kernels: bf16 sampling (they have no float32 version) where ``fused_available``; else
    torch.compile. ``generate.compile_pays`` uses the same rule."""
    return sampling_autocast(autocast, model.device) == torch.bfloat16 and fused_available(model.network)


def fused_network(model: LoadedModel) -> nn.Module | None:
    """The fused Triton sampling network (``fused.unet.FusedUNet``) replayed as CUDA graphs, where
    it runs; None elsewhere, or if building it failed (said once on stderr). 50-step DDIM of 256
    images on an H100: 2,123 images/s against 643 for the folded network eagerly and 1,118 compiled
    by Inductor (docs/performance.md). Built once per network; the kernels compile on their first
    call (about 20-30 s on a new machine, then from Triton's disk cache)."""
    network = model.network
    if not fused_available(network):
        return None
    with _BUILD_LOCK:
        if network not in _FUSED:
            _FUSED[network] = _build_fused(network)
        return _FUSED[network]


def _build_fused(network: UNet) -> nn.Module | None:
    from .fused import unet as fused

    try:
        return fused.CudaGraphed(fused.FusedUNet(network))
    except Exception as e:  # noqa: BLE001 - e.g. out of memory, or a network the kernels cannot express
        print(f"building the fused sampling network failed ({type(e).__name__}: {str(e)[:200]}); "
              "sampling without it", file=sys.stderr)
        return None


def denoiser(model: LoadedModel, autocast: torch.dtype | str | None = AUTO, compile: bool = False,
             guidance: Guidance | None = None) -> Denoiser | GuidedDenoiser:
    """The model's Denoiser. ``compile``: the fused kernels where they run (``runs_fused``), else
    the folded network through torch.compile; otherwise the folded network eagerly. If building
    the fused network fails, the Denoiser runs the folded network eagerly; if the fused or compiled
    network fails at a call, the Denoiser says so and runs eagerly from then on. With an active
    ``guidance`` (w != 1, a guide checked by ``guidance.guidance``): the autoguided denoiser of
    this model and the guide's, each run as above."""
    if guidance is not None and guidance.active:
        return GuidedDenoiser(denoiser(model, autocast, compile), denoiser(guidance.guide, autocast, compile),
                              guidance.weight)
    network = sampling_network(model)
    prediction = model.experiment.train.prediction
    if compile and runs_fused(model, autocast):
        fast = fused_network(model)
        if fast is None:  # building it failed (said on stderr): eager, as after a failing call
            return Denoiser(network, prediction, model.normalization, autocast)
        return Denoiser(network, prediction, model.normalization, autocast, compile=True, fast=fast)
    return Denoiser(network, prediction, model.normalization, autocast, compile=compile)
