"""2x bilinear upsampling and 2x2 average pooling of NHWC activations as Triton kernels, for the
fused sampling network (unet.py).

Why: PyTorch's channels_last pooling and upsampling kernels take 1.21 ms of a 256-image sampling
call of the reference network on an H100, these 0.17 ms (docs/performance.md); its bilinear kernel
runs far below the memory bandwidth. Both operations here read each input once and write each output once,
computing in float32 and rounding once, as PyTorch's kernels do.

Upsampling (``align_corners=False``): along each axis output 2i is 3/4 x[i] + 1/4 x[i-1] and
output 2i+1 is 3/4 x[i] + 1/4 x[i+1], indices clamped at the border (as ``unet.upsample2x_written_out``).
Like conv.py, the kernels run under Triton's interpreter on a CPU for the tests.
"""

from __future__ import annotations

import torch

from .conv import check_offsets, interpreting

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

BLOCK_P = 64  # output pixels per program


def _upsample2x_kernel(x_ptr, out_ptr, P, H, W, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixel (n, oh, ow), flattened
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (p < P)[:, None] & (c < C)[None, :]
    ow = p % (2 * W)
    oh = (p // (2 * W)) % (2 * H)
    n = p // (4 * H * W)
    i = oh // 2
    j = ow // 2
    i2 = tl.minimum(tl.maximum(tl.where(oh % 2 == 0, i - 1, i + 1), 0), H - 1)  # the 1/4 neighbour
    j2 = tl.minimum(tl.maximum(tl.where(ow % 2 == 0, j - 1, j + 1), 0), W - 1)
    base = n * H
    x11 = tl.load(x_ptr + (((base + i) * W + j) * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    x12 = tl.load(x_ptr + (((base + i) * W + j2) * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    x21 = tl.load(x_ptr + (((base + i2) * W + j) * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    x22 = tl.load(x_ptr + (((base + i2) * W + j2) * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    y = 0.75 * (0.75 * x11 + 0.25 * x12) + 0.25 * (0.75 * x21 + 0.25 * x22)
    tl.store(out_ptr + p[:, None] * C + c[None, :], y.to(out_ptr.dtype.element_ty), mask=ok)


def _avgpool2x_kernel(x_ptr, out_ptr, P, Ho, Wo, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixel (n, i, j), flattened
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (p < P)[:, None] & (c < C)[None, :]
    j = p % Wo
    i = (p // Wo) % Ho
    n = p // (Ho * Wo)
    top = (n * 2 * Ho + 2 * i) * (2 * Wo) + 2 * j  # input pixel (2i, 2j)
    below = top + 2 * Wo
    acc = tl.load(x_ptr + (top * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    acc += tl.load(x_ptr + ((top + 1) * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    acc += tl.load(x_ptr + (below * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    acc += tl.load(x_ptr + ((below + 1) * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + p[:, None] * C + c[None, :], (0.25 * acc).to(out_ptr.dtype.element_ty), mask=ok)


if triton is not None:
    _upsample2x_kernel = triton.jit(_upsample2x_kernel)
    _avgpool2x_kernel = triton.jit(_avgpool2x_kernel)


def _check(x: torch.Tensor, scale: float) -> tuple[int, int, int, int]:
    """x's shape, once x is a contiguous NHWC tensor that the kernels can read and whose result
    (``scale`` times its elements) they can address."""
    if triton is None:
        raise RuntimeError("the fused resampling kernels need Triton (pip install triton)")
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError(f"expected a contiguous NHWC tensor [N, H, W, C], got shape {tuple(x.shape)}")
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError("the fused resampling kernels run on CUDA (or, for tests, under TRITON_INTERPRET=1)")
    check_offsets(x.numel(), int(x.numel() * scale))
    return tuple(x.shape)


def _block_c(c: int) -> int:
    return min(128, triton.next_power_of_2(c))


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] -> [N, 2H, 2W, C], bilinear, align_corners=False."""
    n, h, w, c = _check(x, 4)
    out = torch.empty(n, 2 * h, 2 * w, c, device=x.device, dtype=x.dtype)
    p = out.numel() // c
    _upsample2x_kernel[(triton.cdiv(p, BLOCK_P), triton.cdiv(c, _block_c(c)))](
        x, out, p, h, w, c, BLOCK_P=BLOCK_P, BLOCK_C=_block_c(c))
    return out


def avgpool2x(x: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] -> [N, H/2, W/2, C], the mean of each 2x2 block (H and W even)."""
    n, h, w, c = _check(x, 0.25)
    if h % 2 or w % 2:
        raise ValueError(f"2x2 pooling needs an even height and width, got {h}x{w}")
    out = torch.empty(n, h // 2, w // 2, c, device=x.device, dtype=x.dtype)
    p = out.numel() // c
    _avgpool2x_kernel[(triton.cdiv(p, BLOCK_P), triton.cdiv(c, _block_c(c)))](
        x, out, p, h // 2, w // 2, c, BLOCK_P=BLOCK_P, BLOCK_C=_block_c(c))
    return out
