"""The U-Net for sampling on CUDA with every residual block as two fused Triton convolutions.

Built from a trained ``UNet`` in eval mode (``FusedUNet(network)``; the network is not modified):
BatchNorm folded into conv1 as in ``diffusion_core/folding.py``, then per residual block

    h = silu(conv3x3(W1, [x, skip]) + B1)                        one launch of fused_conv
    y = conv3x3(W2, h) + conv1x1(Ws, [x, skip]) + b2 + bs        one launch (or + x, identity)

with activations kept as contiguous NHWC tensors, so no skip concatenation, bias addition, SiLU
or residual addition runs on its own (``conv.py`` says why that matters); pooling and
upsampling are Triton kernels too (``resample.py``). The 1x1 stem is folded into the first
block and the 1x1 head into the last (``FusedBlock``), so the network's first kernel reads the
image and its last writes the output; the noise embedding enters the first block as a bias per
image. Attention (where configured) stays a PyTorch operation.

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
import torch.nn.functional as F
from torch import nn

from ..folding import FoldedResidualBlock, fold_batchnorm
from ..model import module_device
from ..unet import ResidualBlock, UNet, dataflow, noise_embedding
from . import conv as fc
from . import resample as fr


def nchw_view(t: torch.Tensor) -> torch.Tensor:
    """An NHWC tensor seen as [N, C, H, W] (channels_last strides): a view, no copy."""
    return t.permute(0, 3, 1, 2)


def to_nhwc(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> contiguous NHWC; a view when t is channels_last."""
    return t.permute(0, 2, 3, 1).contiguous()


def image_channels_padded(channels: int) -> int:
    """The image's channels as the first block reads them: padded with zeros to a multiple of 16
    (Triton's smallest matrix-product depth)."""
    return -(-channels // 16) * 16


def pad_channels(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, C, H, W] -> contiguous NHWC [N, H, W, image_channels_padded(C)] in ``dtype``, zeros beyond C."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, h, w, image_channels_padded(c), dtype=dtype)
    out[..., :c] = x.permute(0, 2, 3, 1)
    return out


def _border_sums(weight: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[C_out, C_in, 3, 3] -> [3, 3, C_in, C_out]: entry (row class, column class, i, o) is what a
    constant 1 in input channel i adds to output channel o of a zero-padded 3x3 convolution at a
    pixel of that border class (``fc.border_table``'s classes)."""
    c_in = weight.shape[1]
    ones = torch.eye(c_in, dtype=weight.dtype, device=weight.device)[:, :, None, None].expand(c_in, c_in, min(h, 3), min(w, 3))
    maps = F.conv2d(ones, weight, padding=1).permute(2, 3, 0, 1)  # [h3, w3, C_in, C_out]
    return fc.border_table(maps)


def _shortcut_matrix(block: FoldedResidualBlock) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's shortcut as a [C_out, C_in] matrix and a bias (an identity is the unit matrix)."""
    c_out, c_in = block.conv2.weight.shape[0], block.weight.shape[1]
    if isinstance(block.shortcut, nn.Identity):
        like = {"dtype": torch.float64, "device": block.weight.device}
        return torch.eye(c_out, c_in, **like), torch.zeros(c_out, **like)
    return block.shortcut.weight.double()[:, :, 0, 0], block.shortcut.bias.double()


class FusedBlock(nn.Module):
    """A ``FoldedResidualBlock`` as two ``fused_conv`` launches; ``skip_channels`` > 0 for an up
    block, whose input is [x, skip] (never concatenated).

    ``stem``: the network's 1x1 stem convolution, for the first block, whose input is
    cat[stem(image), embedding]. Both are linear in what they add, so the stem is folded into the
    block's weights (the block reads the image, ``pad_channels``) and the embedding, constant over
    the image, becomes a bias per image: by border class for the 3x3 convolution (``_border_sums``),
    plain for the shortcut. Neither the stem's output nor the concatenation is ever built.

    ``head``: the network's 1x1 head convolution, for the last block: folded into conv2 and the
    shortcut, so the block returns the network's output and its own is never stored."""

    def __init__(self, block: FoldedResidualBlock, skip_channels: int, dtype: torch.dtype, *,
                 stem: nn.Conv2d | None = None, image_size: int = 0, head: nn.Conv2d | None = None):
        super().__init__()
        c_mid, c_in = block.weight.shape[:2]
        ca = c_in - skip_channels
        split = lambda w: [w[:, :ca], w[:, ca:]] if skip_channels else [w]  # noqa: E731
        w1 = block.weight.double()
        bias_map = block.bias_map.double()[0].permute(1, 2, 0)  # [H, W, C]
        table = fc.border_table(bias_map)
        if not torch.allclose(fc.expand_border_table(table, *bias_map.shape[:2]), bias_map, rtol=1e-4, atol=1e-5):
            raise ValueError("the folded bias map is not a function of the border class")  # a different padding
        w2, b2 = block.conv2.weight.double(), block.conv2.bias.double()
        ws, bs = _shortcut_matrix(block)
        self.identity = isinstance(block.shortcut, nn.Identity) and stem is None and head is None
        self.stem = stem is not None
        if stem is not None:  # input cat[A image + b, e]: fold A in, and b and e into the biases
            a, b = stem.weight.double()[:, :, 0, 0], stem.bias.double()  # [w0, C_img], [w0]
            w0, pad = a.shape[0], image_channels_padded(a.shape[1])
            sums = _border_sums(w1, image_size, image_size)  # [3, 3, C_in, C_mid]
            table = table + torch.einsum("i,yxio->yxo", b, sums[:, :, :w0])
            self.register_buffer("e1", sums[:, :, w0:].float().contiguous())  # embedding -> conv1's table
            w1 = F.pad(torch.einsum("oiyx,ij->ojyx", w1[:, :w0], a), (0, 0, 0, 0, 0, pad - a.shape[1]))
            self.register_buffer("e2", ws[:, w0:].t().float().contiguous())  # embedding -> conv2's bias
            bs = bs + ws[:, :w0] @ b
            ws = F.pad(ws[:, :w0] @ a, (0, pad - a.shape[1]))
        if head is not None:  # out = Wh y + bh: fold Wh into conv2 and the shortcut
            wh, bh = head.weight.double()[:, :, 0, 0], head.bias.double()
            w2 = torch.einsum("co,oiyx->ciyx", wh, w2)
            ws, bs, b2 = wh @ ws, wh @ bs, wh @ b2 + bh
        self.register_buffer("w1", fc.pack_weights(split(w1) if stem is None else [w1], []).to(dtype))
        self.register_buffer("b1", table.float().contiguous())
        shortcut = [] if self.identity else [t[:, :, None, None] for t in split(ws)]
        self.register_buffer("w2", fc.pack_weights([w2], shortcut).to(dtype))
        self.register_buffer("b2", (b2 + (0 if self.identity else bs)).float().contiguous())

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                embedding: torch.Tensor | None = None) -> torch.Tensor:
        b1, b2 = self.b1, self.b2
        if self.stem:  # per image: [N, 3, 3, C_mid] and [N, C_out]
            e = embedding.float()
            b1 = (torch.einsum("ni,yxio->nyxo", e, self.e1) + b1).contiguous()
            b2 = torch.addmm(b2, e, self.e2)
        h = fc.fused_conv(x, self.w1, b1, skip=skip, silu=True)
        if self.identity:
            return fc.fused_conv(h, self.w2, b2, residual=x)
        return fc.fused_conv(h, self.w2, b2, shortcut=(x,) if skip is None else (x, skip))


class FusedUNet(nn.Module):
    """eps_theta(x_t, sigma_t^2) like ``UNet.forward``, [N, C, S, S] in and out, run in ``dtype``."""

    def __init__(self, network: UNet, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if not fusable(network):
            raise ValueError("this network's channel counts are not all multiples of 16; it cannot be fused")
        folded = fold_batchnorm(network)
        self.config = c = folded.config
        self.dtype = dtype
        last = folded.up[-1][-1]
        # the last block returns the network's output unless self-attention follows it
        self.head = None if not isinstance(last, nn.Sequential) else folded.head.to(dtype)
        skip_channels = [blk.weight.shape[0] for level in folded.down for blk in _residuals(level)]
        fold = {id(folded.down[0][0]): {"stem": folded.stem, "image_size": c.image_size}}
        if self.head is None:
            fold[id(last)] = {"head": folded.head}
        self.down = nn.ModuleList(nn.ModuleList(self._block(b, 0, dtype, fold) for b in level) for level in folded.down)
        self.middle = nn.ModuleList(self._block(b, 0, dtype, fold) for b in folded.middle)
        self.up = nn.ModuleList()
        for level in folded.up:
            blocks = nn.ModuleList()
            for b in level:
                blocks.append(self._block(b, skip_channels.pop(), dtype, fold))
            self.up.append(blocks)
        self.eval().requires_grad_(False)

    @staticmethod
    def _block(block: nn.Module, skip_channels: int, dtype: torch.dtype, fold: dict) -> nn.Module:
        if isinstance(block, nn.Sequential):  # residual block then self-attention
            residual, attention = block
            return nn.Sequential(FusedBlock(residual, skip_channels, dtype, **fold.get(id(block), {})),
                                 attention.to(dtype))
        return FusedBlock(block, skip_channels, dtype, **fold.get(id(block), {}))

    def _run(self, block: nn.Module, x: torch.Tensor, skip: torch.Tensor | None = None,
             embedding: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(block, nn.Sequential):
            fused, attention = block
            h = fused(x, skip, embedding)
            # attention as the unfused network runs it under autocast (GroupNorm and softmax in float32)
            with torch.autocast(h.device.type, dtype=self.dtype, enabled=self.dtype in (torch.bfloat16, torch.float16)):
                return to_nhwc(attention(nchw_view(h))).to(self.dtype)
        return block(x, skip, embedding)

    def forward(self, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        # every operation in self.dtype: autocast would run the upsampling in float32; and on x's
        # GPU, where Triton launches (it launches on the current device)
        with _on_device(x.device), torch.autocast(x.device.type, enabled=False):
            return self._forward(x, noise_variance)

    def _forward(self, x: torch.Tensor, noise_variance: torch.Tensor) -> torch.Tensor:
        e = noise_embedding(self.config, x, noise_variance)  # [N, E], into the first block's biases
        x = pad_channels(x, self.dtype)  # the stem is folded into the first block
        first = self.down[0][0]

        def run_block(block: nn.Module, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
            return self._run(block, x, skip, e if block is first else None)

        x = dataflow(self, x, run_block, fr.avgpool2x, fr.upsample2x)  # the U-Net's levels, as UNet runs them
        # the head is folded into the last block unless self-attention follows it
        return nchw_view(x) if self.head is None else self.head(nchw_view(x))


def _on_device(device: torch.device):
    """Make ``device`` the current CUDA device (a no-op elsewhere)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _residuals(level: nn.ModuleList) -> list[FoldedResidualBlock]:
    return [b[0] if isinstance(b, nn.Sequential) else b for b in level]


def fusable(network: UNet) -> bool:
    """Whether every fused convolution's channel counts are multiples of 16: every residual block's
    output width (the widths of the levels), which are also the inputs of all but the first block
    (the image's channels are padded, and the embedding enters as a bias)."""
    return all(m.conv1.out_channels % 16 == 0 for m in network.modules() if isinstance(m, ResidualBlock))


def fused_available(network: UNet) -> bool:
    """Whether ``network`` can sample through the fused kernels where it is: on CUDA with Triton,
    channel counts multiples of 16, and not switched off by DIFFUSION_EXPLORER_FUSED=0."""
    return (os.environ.get("DIFFUSION_EXPLORER_FUSED", "1") != "0" and fc.available(module_device(network))
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
