"""The U-Net noise-prediction network of the reference design (the Keras "Denoising Diffusion
Implicit Models" example), configurable in widths, depth, image size and optional attention.

Layout (widths = [w_0, ..., w_L]):
    x [N x 3 x S x S] -> 1x1 conv to w_0, concatenated with the noise embedding upsampled to S x S
    down level k < L:  block_depth residual blocks of width w_k (each output kept as a skip),
                       then 2x average pooling
    middle:            block_depth residual blocks of width w_L
    up level k < L:    2x bilinear upsampling, then block_depth residual blocks of width w_k,
                       each on [x, skip] concatenated (skips popped in reverse order)
    out:               1x1 conv to 3 channels, initialised to zero
Residual block: BatchNorm (no affine) -> 3x3 conv -> swish -> 3x3 conv, plus x (or a 1x1 conv
of x where the width changes). The network is conditioned on the noise variance sigma^2 through a
sinusoidal embedding with frequencies log-spaced from 1 to ``embedding_max_frequency``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    kind: Literal["unet"] = "unet"  # network.kind: this reference U-Net (diffusion_core.networks)
    widths: tuple[int, ...] = (32, 64, 96, 128)  # channels per level; len(widths) - 1 poolings
    block_depth: int = 2  # residual blocks per level (2 to 4 in the seed experiments)
    image_size: int = 64  # square input size; must divide by 2 ** (len(widths) - 1)
    attention_resolutions: tuple[int, ...] = ()  # feature-map sizes with self-attention after each block
    attention_heads: int = 4
    embedding_dims: int = 32  # sinusoidal noise-embedding size
    embedding_min_frequency: float = 1.0
    embedding_max_frequency: float = 1000.0
    channels: int = 3
    batchnorm_momentum: float = 0.01  # PyTorch convention; Keras' 0.99

    def __post_init__(self) -> None:
        if self.kind != "unet":
            raise ValueError(f"a UNetConfig has network.kind 'unet', got {self.kind!r}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths needs at least two positive entries, got {list(self.widths)}")
        if not 1 <= self.block_depth <= 8:
            raise ValueError(f"block_depth must be from 1 to 8, got {self.block_depth}")
        factor = 2 ** (len(self.widths) - 1)
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {factor} "
                             f"for {len(self.widths)} widths ({len(self.widths) - 1} poolings)")
        if self.embedding_dims % 2:
            raise ValueError("embedding_dims must be even")
        for r in self.attention_resolutions:
            if r not in self.resolutions:
                raise ValueError(f"attention resolution {r} is not one of the levels {self.resolutions}")
            width = self.widths[self.resolutions.index(r)]
            if width % self.attention_heads:
                raise ValueError(f"width {width} at resolution {r} is not divisible by {self.attention_heads} heads")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size of each level, e.g. (80, 40, 20, 10, 5)."""
        return tuple(self.image_size // 2**k for k in range(len(self.widths)))


def sinusoidal_embedding(noise_variance: torch.Tensor, dims: int, min_freq: float, max_freq: float) -> torch.Tensor:
    """[N] -> [N x dims]: sin and cos of 2 pi f v for dims/2 frequencies f log-spaced in [min, max]."""
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dims // 2,
                                     device=noise_variance.device, dtype=torch.float32))
    angles = 2.0 * math.pi * freqs[None, :] * noise_variance.float()[:, None]  # [N x dims/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def noise_embedding(config: UNetConfig, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
    """The [N x E] embedding of the noise variances [N] of the batch ``x`` [N x C x S x S], once
    x's size is checked against the network's."""
    n, _, h, w = x.shape
    if (h, w) != (config.image_size, config.image_size):
        raise ValueError(f"this network takes {config.image_size}x{config.image_size} images, got {h}x{w}")
    return sinusoidal_embedding(noise_variance.reshape(n), config.embedding_dims,
                                config.embedding_min_frequency, config.embedding_max_frequency)


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels_last (and not also plain contiguous, as 1x1 maps are)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def upsample2x_bilinear(x: torch.Tensor) -> torch.Tensor:
    """2x bilinear upsampling, ``F.interpolate(x, scale_factor=2, mode="bilinear",
    align_corners=False)``, in the form that is fastest where it runs:

    - a pass with gradients inside ``torch.compile``: ``upsample2x_written_out`` (the same numbers
      up to float rounding). One H200, reference network, batch 256: the compiled training step
      takes 16.3 ms with it against 23.6 ms with PyTorch's kernel.
    - a pass without gradients (sampling): PyTorch's kernel in the activations' dtype. Autocast
      upcasts upsampling to float32, and the float32 output then promoted the skip concatenation,
      the BatchNorm and copies after it to float32 as well (eager bf16 sampling on an H100: 0.9 ms
      of upsampling kernels and about 1 ms of float32 copies per 10.7 ms network call). The
      kernel accumulates in float32 either way; only its output is rounded to the activations'
      dtype, as the convolution after it would round it. Compiled, Inductor's gather is faster
      than the written-out form here (4.2 against 5.2 ms per sampling call).
    - eager with gradients (CPU training, the eager fallback): PyTorch's kernel as autocast runs
      it, so its backward accumulates in float32."""
    if x.requires_grad:
        if torch.compiler.is_compiling():
            return upsample2x_written_out(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.autocast(x.device.type, enabled=False):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def upsample2x_written_out(x: torch.Tensor) -> torch.Tensor:
    """2x bilinear upsampling (align_corners=False) as shifted copies, weighted sums and an interleave.

    Along each axis output 2i is 3/4 x[i] + 1/4 x[i-1] and output 2i+1 is 3/4 x[i] + 1/4 x[i+1],
    indices clamped at the border (source coordinate (dst + 1/2) / 2 - 1/2), as PyTorch's kernel
    computes. Why: compiled, PyTorch's upsampling lowers to a gather whose backward scatters with
    atomic adds into zeroed float32 buffers; on an H100 it takes about 8 of the 27 ms of a
    batch-256 training step of the reference network (bench/profile_steps.py --baseline interpolate;
    docs/performance.md). Written out, forward and backward are plain loads that fuse with their
    neighbours. Eagerly PyTorch's kernel is faster (about 2x on a CPU).
    Works on any memory format; channels_last in, channels_last out."""
    if x.dim() != 4:
        raise ValueError(f"expected [N x C x H x W], got shape {tuple(x.shape)}")
    nhwc = is_channels_last(x)
    y = x.permute(0, 2, 3, 1) if nhwc else x  # interleave along the outer axes of the storage order
    for dim in (1, 2) if nhwc else (2, 3):
        y = _double(y, dim)
    return y.permute(0, 3, 1, 2) if nhwc else y


def _double(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear 2x upsampling along one axis (align_corners=False, edges clamped)."""
    n = x.shape[dim]
    previous = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)  # x[max(i - 1, 0)]
    following = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)  # x[min(i + 1, n - 1)]
    even, odd = 0.75 * x + 0.25 * previous, 0.75 * x + 0.25 * following
    shape = list(x.shape)
    shape[dim] = 2 * n
    return torch.stack([even, odd], dim + 1).reshape(shape)


class ResidualBlock(nn.Module):
    """BatchNorm (no affine) -> 3x3 conv -> swish -> 3x3 conv, plus a (1x1-projected) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, momentum: float):
        super().__init__()
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.norm = nn.BatchNorm2d(in_ch, affine=False, momentum=momentum, eps=1e-3)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.conv1(self.norm(x))))
        return h + self.shortcut(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, GroupNorm in, residual out."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(32, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        # [N x heads x HW x c/heads] each
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(a.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, sigma_t^2): [N x C x S x S], [N] -> [N x C x S x S]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        widths, depth = c.widths, c.block_depth
        self.stem = nn.Conv2d(c.channels, widths[0], 1)
        ch = widths[0] + c.embedding_dims
        self.down = nn.ModuleList()
        skip_channels = []
        for level, width in enumerate(widths[:-1]):
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(self._block(ch, width, c.resolutions[level]))
                ch = width
                skip_channels.append(ch)
            self.down.append(blocks)
        self.middle = nn.ModuleList()
        for _ in range(depth):
            self.middle.append(self._block(ch, widths[-1], c.resolutions[-1]))
            ch = widths[-1]
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(self._block(ch + skip_channels.pop(), widths[level], c.resolutions[level]))
                ch = widths[level]
            self.up.append(blocks)
        self.head = nn.Conv2d(ch, c.channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _block(self, in_ch: int, out_ch: int, resolution: int) -> nn.Module:
        block = ResidualBlock(in_ch, out_ch, self.config.batchnorm_momentum)
        if resolution in self.config.attention_resolutions:
            return nn.Sequential(block, SelfAttention(out_ch, self.config.attention_heads))
        return block

    def forward(self, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        c = self.config
        n, _, h, w = x.shape
        e = noise_embedding(c, x, noise_variance)  # [N x E]
        stem = self.stem(x)
        # in the stem's dtype: under autocast a float32 embedding made the concatenation and the
        # first block's BatchNorm float32 (the convolutions round their inputs to bf16 anyway)
        e = e.to(stem.dtype)[:, :, None, None].expand(n, c.embedding_dims, h, w)  # nearest upsampling
        if is_channels_last(stem):
            # cat keeps channels_last only if every input has it; with the expanded embedding as is
            # it returned NCHW, which made the first block convert layouts (compiled training step
            # on an H100: one transposing kernel of 2.1 ms in a 18.5 ms step)
            e = e.contiguous(memory_format=torch.channels_last)
        x = torch.cat([stem, e], dim=1)  # [N x (w0 + E) x S x S]
        x = dataflow(self, x, _run_block, _pool2x, upsample2x_bilinear)
        return self.head(x)


def _run_block(block: nn.Module, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    return block(x if skip is None else torch.cat([x, skip], dim=1))


def _pool2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def dataflow(network: nn.Module, x: torch.Tensor, run_block: Callable, pool: Callable, upsample: Callable):
    """The U-Net's levels, once: what ``UNet.forward`` does between the stem and the head, over the
    ``down``, ``middle`` and ``up`` module lists of ``network`` (a UNet, or a network rebuilt from
    one block for block, such as ``fused.unet.FusedUNet``), with that network's operations:

        down level:  each block's output kept as a skip, then ``pool``
        middle:      the blocks in turn
        up level:    ``upsample``, then each block on x and the latest skip not yet used

    ``run_block(block, x, skip)`` runs one block (``skip`` None outside the up levels)."""
    skips = []
    for blocks in network.down:
        for block in blocks:
            x = run_block(block, x, None)
            skips.append(x)
        x = pool(x)
    for block in network.middle:
        x = run_block(block, x, None)
    for blocks in network.up:
        x = upsample(x)
        for block in blocks:
            x = run_block(block, x, skips.pop())
    return x

