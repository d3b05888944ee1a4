"""The U-Net for inference with each residual block's BatchNorm folded into the convolution after it.

In eval mode BatchNorm (no affine) is a per-channel affine map with constant statistics
(Ioffe & Szegedy 2015, Algorithm 2, the inference network):

    BN(x) = s * x + t,    s = 1 / sqrt(running_var + eps),    t = -running_mean * s.

The block's 3x3 convolution pads BN(x) with zeros, i.e. with zeros in normalised units, so

    conv(W, b; pad0(s * x + t)) = conv(W * s; pad0(x)) + B,    B = conv(W, b; pad0(t * 1)),

where ``B`` does not depend on x: a bias map [C_out x H x W], constant inside and different on
the one-pixel border where the kernel reaches into the padding. Folding removes one pass over
every block's input (the BatchNorm kernel reads and writes it) and leaves the bias-map addition
where the convolution's bias addition was. Training needs batch statistics, so only networks in
eval mode fold; ``fold_batchnorm`` returns a new network and never touches the one it is given.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .unet import ResidualBlock, UNet, is_channels_last


class FoldedResidualBlock(nn.Module):
    """``ResidualBlock`` in eval mode with its BatchNorm folded into conv1 (see the module doc)."""

    def __init__(self, block: ResidualBlock, size: tuple[int, int]):
        super().__init__()
        norm, conv1 = block.norm, block.conv1
        if norm.training or norm.running_mean is None:
            raise ValueError("only a BatchNorm in eval mode with running statistics folds")
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        shift = -norm.running_mean.double() * scale
        weight = conv1.weight.double()
        fmt = torch.channels_last if is_channels_last(conv1.weight) else torch.contiguous_format
        self.weight = nn.Parameter((weight * scale[None, :, None, None]).to(conv1.weight.dtype)
                                   .contiguous(memory_format=fmt), requires_grad=False)
        constant = shift[None, :, None, None].expand(1, len(shift), *size)
        bias_map = F.conv2d(constant, weight, conv1.bias.double(), padding=conv1.padding)
        self.register_buffer("bias_map", bias_map.to(conv1.weight.dtype).contiguous(memory_format=fmt))
        self.padding = conv1.padding
        self.conv2, self.shortcut = block.conv2, block.shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.weight, None, padding=self.padding)
        h = self.conv2(F.silu(h + self.bias_map.to(h.dtype)))
        return h + self.shortcut(x)


@torch.no_grad()
def fold_batchnorm(network: UNet) -> UNet:
    """A copy of ``network`` (in eval mode) whose residual blocks have their BatchNorm folded into
    their first convolution; it computes what the network computes, up to float rounding."""
    if network.training:
        raise ValueError("fold a network in eval mode: in training BatchNorm uses batch statistics")
    folded = copy.deepcopy(network)
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes[module] = tuple(args[0].shape[-2:])

    hooks = [m.register_forward_pre_hook(record) for m in folded.modules() if isinstance(m, ResidualBlock)]
    try:  # one batch-1 pass tells each block the size of its input
        p = next(folded.parameters())
        s = folded.config.image_size
        folded(torch.zeros(1, folded.config.channels, s, s, device=p.device, dtype=p.dtype),
               torch.zeros(1, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    for parent in list(folded.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ResidualBlock):
                setattr(parent, name, FoldedResidualBlock(child, sizes[child]))
    return folded.eval().requires_grad_(False)
