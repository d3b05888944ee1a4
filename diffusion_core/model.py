"""A network plus what it needs to act as a denoiser: the prediction type, the data
normalisation, and the conversion between the network's units and uint8 pixels."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

from . import diffusion as D
from .unet import UNet


@dataclass(frozen=True)
class PixelNormalization:
    """x = (pixel / 255 - mean) / std per channel: the units the network works in."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        values_ok = all(math.isfinite(v) for v in self.mean + self.std) and all(s > 0 for s in self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not values_ok:
            raise ValueError(f"normalization needs 3 finite means and 3 finite positive standard deviations, "
                             f"got mean {list(self.mean)[:4]}, std {list(self.std)[:4]}")

    @classmethod
    def from_images(cls, images: np.ndarray) -> "PixelNormalization":
        """Per-channel statistics of uint8 images [N x H x W x 3] (the Keras Normalization layer)."""
        x = images.reshape(-1, 3).astype(np.float64) / 255.0
        return cls(tuple(x.mean(0)), tuple(np.maximum(x.std(0), 1e-3)))

    def tensors(self, device, dtype=torch.float32):
        """mean, std [1 x 3 x 1 x 1] on ``device``, made once per device (building them anew would
        be two host-to-device copies per call)."""
        return _mean_std(self.mean, self.std, str(torch.device(device)), dtype)

    def to_model(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [N x 3 x H x W] (any device) -> float32 network units."""
        return pixels_to_model(images_uint8, *self.tensors(images_uint8.device))

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """network units [N x 3 x H x W] -> uint8 numpy [N x H x W x 3], clipped to [0, 255]."""
        mean, std = self.tensors(x.device)
        pixels = ((x.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()

    def x0_range(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds [1 x 3 x 1 x 1] of valid pixels in network units, for clipping predicted x0."""
        mean, std = self.tensors(device)
        return (0.0 - mean) / std, (1.0 - mean) / std


def pixels_to_model(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(pixel / 255 - mean) / std in float32; the training step calls it with its own copy of
    ``mean`` and ``std`` inside torch.compile (which does not trace through the cache below)."""
    return (images_uint8.float() / 255.0 - mean) / std


@functools.lru_cache(maxsize=64)
def _mean_std(mean: tuple, std: tuple, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):  # shared: ordinary tensors even if first asked for in inference mode
        return (torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1),
                torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1))


AUTO = "auto"  # the precision argument's default: see sampling_autocast


def sampling_autocast(autocast: torch.dtype | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a Denoiser runs under. ``"auto"``: bf16 on CUDA (50-step DDIM of 256
    images on an H100: 555 images/s against float32's 165, 643 with channels_last and folded
    BatchNorm, which the Denoiser uses on CUDA; images within 7/255 of float32's, relative L2
    3.4e-3: docs/performance.md), float32 elsewhere. None: float32."""
    if autocast == AUTO:
        return torch.bfloat16 if device.type == "cuda" else None
    if autocast is not None and not isinstance(autocast, torch.dtype):
        raise ValueError(f"autocast must be a torch dtype, None or {AUTO!r}, got {autocast!r}")
    return autocast


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` lives: its first parameter's device, else its first buffer's (the fused
    sampling network keeps its weights as buffers)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    raise ValueError(f"{type(module).__name__} has neither parameters nor buffers: its device is unknown")


class Denoiser:
    """``(x_t, signal_rate, noise_rate) -> (pred_eps, pred_x0)`` around a trained network.

    The network is conditioned on the noise variance sigma^2 and predicts eps or v; it runs under
    autocast to ``sampling_autocast(autocast)`` (bf16 on CUDA by default). Never mutates the network.
    ``compile``: run the network through ``torch.compile`` (static shapes; one compilation per
    batch shape, shared by every Denoiser of the same network). ``fast``: a faster module that
    computes what ``network`` computes (the fused sampling network), run instead of it. If
    compiling, the compiled call or ``fast`` fails, this Denoiser says so on stderr and runs the
    network eagerly from then on.
    """

    def __init__(self, network: UNet, prediction: str, normalization: PixelNormalization,
                 autocast: torch.dtype | str | None = AUTO, compile: bool = False,
                 fast: torch.nn.Module | None = None):
        self.network = network
        self.prediction = prediction
        self.normalization = normalization
        self.device = module_device(network)
        self.autocast = sampling_autocast(autocast, self.device)
        self.x0_range = normalization.x0_range(self.device)
        self.calls = 0  # network evaluations, for the benchmarks and the UI
        self._forward = fast if fast is not None else network
        if compile and fast is None:
            try:
                self._forward = torch.compile(network, dynamic=False)
            except Exception as e:  # noqa: BLE001 - no backend on this platform
                self._compile_failed(e)

    @property
    def compiled(self) -> bool:
        return self._forward is not self.network

    def _compile_failed(self, e: Exception) -> None:
        print(f"compiled sampling failed ({type(e).__name__}: {str(e)[:200]}); sampling eagerly", file=sys.stderr)
        self._forward = self.network

    def _context(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    @torch.inference_mode()
    def network_output(self, x_t: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """The network's prediction for ``x_t`` at noise variances ``variance`` [N], as float32,
        computed as this Denoiser computes it (layout, autocast, the fast or compiled network)."""
        if self.device.type == "cuda":
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self._context():
            try:
                out = self._forward(x_t, variance)
            except Exception as e:  # noqa: BLE001 - torch.compile fails lazily, at a call
                if not self.compiled:
                    raise
                self._compile_failed(e)
                out = self.network(x_t, variance)
        return out.float()

    @torch.inference_mode()
    def __call__(self, x_t: torch.Tensor, signal: float, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        variance = torch.full((x_t.shape[0],), noise**2, device=x_t.device, dtype=torch.float32)
        out = self.network_output(x_t, variance)
        self.calls += 1
        if self.prediction == "v":
            return D.eps_x0_from_v(x_t, out, signal, noise)
        return out, D.x0_from_eps(x_t, out, signal, noise)
