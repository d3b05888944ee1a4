"""The U-Net for sampling on CUDA with every residual block as two fused Triton convolutions.

Built from a trained ``UNet`` in eval mode (``FusedUNet(network)``; the network is not modified):
BatchNorm folded into conv1 as in ``folding.py``, then per residual block

    h = silu(conv3x3(W1, [x, skip]) + B1)                        one launch of fused_conv
    y = conv3x3(W2, h) + conv1x1(Ws, [x, skip]) + b2 + bs        one launch (or + x, identity)

with activations kept as contiguous NHWC tensors, so no skip concatenation, bias addition, SiLU
or residual addition runs on its own (``fused_conv.py`` says why that matters); pooling and
upsampling are Triton kernels too (``fused_resample.py``). The stem, the noise embedding,
attention and the head stay PyTorch operations.

Same function as the network it is built from, up to the rounding of its dtype (tested under
Triton's interpreter on a CPU, and against float32 on a GPU by ``bench/bench_fused.py``).
Networks whose channel counts are not multiples of 16 (Triton's matrix-product minimum) cannot be
fused: ``fusable`` says so and the caller keeps the folded network.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch
from torch import nn

from . import fused_conv as fc
from . import fused_resample as fr
from .folding import FoldedResidualBlock, fold_batchnorm
from .unet import UNet, noise_embedding


def nchw_view(t: torch.Tensor) -> torch.Tensor:
    """An NHWC tensor seen as [N, C, H, W] (channels_last strides): a view, no copy."""
    return t.permute(0, 3, 1, 2)


def to_nhwc(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> contiguous NHWC; a view when t is channels_last."""
    return t.permute(0, 2, 3, 1).contiguous()


class FusedBlock(nn.Module):
    """A ``FoldedResidualBlock`` as two ``fused_conv`` launches; ``skip_channels`` > 0 for an up
    block, whose input is [x, skip] (never concatenated)."""

    def __init__(self, block: FoldedResidualBlock, skip_channels: int, dtype: torch.dtype):
        super().__init__()
        c_out, c_in = block.weight.shape[:2]
        ca = c_in - skip_channels
        split = lambda w: [w[:, :ca], w[:, ca:]] if skip_channels else [w]  # noqa: E731
        w1 = block.weight.float()
        self.register_buffer("w1", fc.pack_weights(split(w1), []).to(dtype))
        bias_map = block.bias_map.float()[0].permute(1, 2, 0)  # [H, W, C]
        table = fc.border_table(bias_map)
        if not torch.allclose(fc.expand_border_table(table, *bias_map.shape[:2]), bias_map, rtol=1e-4, atol=1e-5):
            raise ValueError("the folded bias map is not a function of the border class")  # a different padding
        self.register_buffer("b1", table)
        conv2, shortcut = block.conv2, block.shortcut
        bias = conv2.bias.float()
        self.identity = isinstance(shortcut, nn.Identity)
        ws = []
        if not self.identity:
            ws = split(shortcut.weight.float())
            bias = bias + shortcut.bias.float()
        self.register_buffer("w2", fc.pack_weights([conv2.weight.float()], ws).to(dtype))
        self.register_buffer("b2", bias.contiguous())

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        h = fc.fused_conv(x, self.w1, self.b1, skip=skip, silu=True)
        if self.identity:
            return fc.fused_conv(h, self.w2, self.b2, residual=x)
        return fc.fused_conv(h, self.w2, self.b2, shortcut=(x,) if skip is None else (x, skip))


class FusedUNet(nn.Module):
    """eps_theta(x_t, sigma_t^2) like ``UNet.forward``, [N, C, S, S] in and out, run in ``dtype``."""

    def __init__(self, network: UNet, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if not fusable(network):
            raise ValueError("this network's channel counts are not all multiples of 16; it cannot be fused")
        folded = fold_batchnorm(network)
        self.config = folded.config
        self.dtype = dtype
        self.stem = folded.stem.to(dtype)
        self.head = folded.head.to(dtype)
        skip_channels = [blk.weight.shape[0] for level in folded.down for blk in _residuals(level)]
        self.down = nn.ModuleList(nn.ModuleList(self._block(b, 0, dtype) for b in level) for level in folded.down)
        self.middle = nn.ModuleList(self._block(b, 0, dtype) for b in folded.middle)
        self.up = nn.ModuleList()
        for level in folded.up:
            blocks = nn.ModuleList()
            for b in level:
                blocks.append(self._block(b, skip_channels.pop(), dtype))
            self.up.append(blocks)
        self.eval().requires_grad_(False)

    @staticmethod
    def _block(block: nn.Module, skip_channels: int, dtype: torch.dtype) -> nn.Module:
        if isinstance(block, nn.Sequential):  # residual block then self-attention
            residual, attention = block
            return nn.Sequential(FusedBlock(residual, skip_channels, dtype), attention.to(dtype))
        return FusedBlock(block, skip_channels, dtype)

    def _run(self, block: nn.Module, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(block, nn.Sequential):
            fused, attention = block
            h = fused(x, skip)
            # attention as the unfused network runs it under autocast (GroupNorm and softmax in float32)
            with torch.autocast(h.device.type, dtype=self.dtype, enabled=self.dtype in (torch.bfloat16, torch.float16)):
                return to_nhwc(attention(nchw_view(h))).to(self.dtype)
        return block(x, skip)

    def forward(self, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        # every operation in self.dtype: autocast would run the upsampling in float32; and on x's
        # GPU, where Triton launches (it launches on the current device)
        with _on_device(x.device), torch.autocast(x.device.type, enabled=False):
            return self._forward(x, noise_variance)

    def _forward(self, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        c = self.config
        n, _, h, w = x.shape
        e = noise_embedding(c, x, noise_variance).to(self.dtype)
        stem = to_nhwc(self.stem(x.to(self.dtype)))
        x = torch.cat([stem, e[:, None, None, :].expand(n, h, w, c.embedding_dims)], dim=3)
        skips = []
        for blocks in self.down:
            for block in blocks:
                x = self._run(block, x)
                skips.append(x)
            x = fr.avgpool2x(x)
        for block in self.middle:
            x = self._run(block, x)
        for blocks in self.up:
            x = fr.upsample2x(x)
            for block in blocks:
                x = self._run(block, x, skips.pop())
        return self.head(nchw_view(x))


def _on_device(device: torch.device):
    """Make ``device`` the current CUDA device (a no-op elsewhere)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _residuals(level: nn.ModuleList) -> list[FoldedResidualBlock]:
    return [b[0] if isinstance(b, nn.Sequential) else b for b in level]


def fusable(network: UNet) -> bool:
    """Whether every fused convolution's channel counts are multiples of 16."""
    c = network.config
    return all(w % 16 == 0 for w in c.widths) and c.embedding_dims % 16 == 0


def fused_available(network: UNet) -> bool:
    """Whether ``network`` can sample through the fused kernels where it is: on CUDA with Triton,
    channel counts multiples of 16, and not switched off by DIFFUSION_EXPLORER_FUSED=0."""
    device = next(network.parameters()).device
    return (os.environ.get("DIFFUSION_EXPLORER_FUSED", "1") != "0" and fc.available(device)
            and fusable(network))



class CudaGraphed(nn.Module):
    """Replays ``network(x, noise_variance)`` as a CUDA graph, one captured graph per input shape
    and dtype: each call is one launch instead of one per kernel (a fused U-Net call is about 40
    kernels, several microseconds of Python each). Inputs are copied into the graph's static
    tensors and the output is copied out, so callers may keep results across calls. Calls from
    several threads (the app's sessions) take turns: the static tensors are shared. CUDA only;
    the network's weights must not change after the first call of a shape (they are not copied)."""

    def __init__(self, network: nn.Module, warmup_calls: int = 2):
        super().__init__()
        self.network = network
        self.warmup_calls = warmup_calls
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, tuple(noise_variance.shape), noise_variance.dtype)
        with self._lock, _on_device(x.device):
            if key not in self._graphs:
                self._graphs[key] = self._capture(x, noise_variance)
            graph, static_x, static_v, static_out = self._graphs[key]
            static_x.copy_(x)
            static_v.copy_(noise_variance)
            graph.replay()
            return static_out.clone()

    def _capture(self, x: torch.Tensor, v: torch.Tensor):
        static_x, static_v = x.clone(), v.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, cuDNN picks algorithms
            for _ in range(self.warmup_calls):
                self.network(static_x, static_v)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the app's other sessions may use the GPU meanwhile, which "global" forbids
        with _CAPTURE_LOCK, torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.network(static_x, static_v)
        return graph, static_x, static_v, static_out


_CAPTURE_LOCK = threading.Lock()  # one capture at a time in the process
