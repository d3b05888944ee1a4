"""One fused convolution kernel for sampling on CUDA (Triton): a 3x3 convolution of up to two
channel blocks, plus up to two 1x1 blocks, plus a bias (per channel, or per channel and border
class: ``border_table``), SiLU and a residual, in one pass.

Why: sampling the reference U-Net is bound by memory traffic, not FLOPs (docs/performance.md,
"The ceilings"): cuDNN runs each narrow convolution as its own kernel and every bias addition,
SiLU, skip concatenation and residual addition around it is another read and write of a full
activation. A residual block of the folded sampling network (``folding.FoldedResidualBlock``),

    h = silu(conv3x3(W1, x) + B1)                      B1: the folded BatchNorm's bias map, which
                                                       takes nine values per channel (border_table)
    y = conv3x3(W2, h) + b2 + shortcut(x)              shortcut: identity or a 1x1 convolution,

becomes two launches of this kernel, and an up block's input ``cat[x, skip]`` is never built:
a convolution of a concatenation is the sum of the convolutions of its parts,

    conv(W, cat[a, b]) = conv(W[:, :Ca], a) + conv(W[:, Ca:], b),

so the kernel reads ``a`` and ``b`` where they are. The convolution is an implicit GEMM
(Chetlur et al. 2014, "cuDNN", section 3): output pixels are the rows, output channels the
columns, and the reduction runs over (tap, input channel) with the tap's shifted pixels loaded
directly from the NHWC activation; zero padding is a masked load. float32 accumulation,
activations in bf16 (or whatever dtype they come in).

Layout: activations are NHWC tensors ``[N, H, W, C]``, contiguous. The weights of one launch are
packed once into a ``[K, C_out]`` matrix (``pack_weights``): the 3x3 blocks tap-major (row
``tap * C + c`` with ``tap = 3 * (dy + 1) + (dx + 1)``), then the 1x1 blocks.

The channel counts are compile-time constants (one compiled kernel per channel layout), so the
reduction loop has a fixed trip count and no integer division, and each pixel's nine taps are
checked against the image border once, as a 9-bit mask, before the loop, which halves a program's instructions (2,376 -> 1,168 on the 64x64
32-channel launch; docs/performance.md). Offsets are 32-bit:
every activation must have fewer than 2**31 elements.

On a CPU the same kernel runs under Triton's interpreter (TRITON_INTERPRET=1 set before Triton
is imported), which is how the tests check it; nothing in the app uses that path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without Triton: the fused path is simply unavailable
    triton = None
    tl = None


def available(device: torch.device) -> bool:
    """Whether the fused kernels can run compiled on ``device``: CUDA with Triton, and a GPU with
    bf16 tensor cores (compute capability 8.0 or newer: A100, RTX 30xx, H100, ...)."""
    return (triton is not None and device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= (8, 0))


@dataclass(frozen=True)
class Tiles:
    """Launch configuration: pixels per program, output channels per program, reduction chunk."""
    block_m: int = 128
    block_n: int = 32
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3
    rows: int = 0  # 4: programs of four whole image rows (``_fused_conv_rows_kernel``; block_m unused)


def default_tiles(c_out: int, channels: tuple[int, ...], pixels: int, image: tuple[int, int] = (0, 0)) -> Tiles:
    """The launch configuration used unless one is given (from ``bench/bench_fused.py``'s
    sweeps on an H100):

    - on 32- and 64-pixel-wide maps (``image`` is (height, width)) with a height that is a multiple
      of 4 and at most 2048 accumulator values per image row (width x output tile): tiles of four
      whole image rows, 2 warps, 3 stages (2 for outputs of 16 channels or fewer);
    - elsewhere 128 flattened pixels per program, 64 where the batch's pixels are few (8x8 maps),
      with 8 warps there for 128 output channels;
    - 32-channel chunks of the 3x3 blocks' ``channels`` (the 1x1 blocks take 16-channel chunks
      where 32 does not divide them)."""
    block_k = 32 if all(c % 32 == 0 for c in channels) else 16
    block_n = min(128, max(16, 1 << (c_out - 1).bit_length()))
    h, w = image
    if w in (32, 64) and h % 4 == 0 and w * block_n <= 2048:
        return Tiles(block_n=block_n, block_k=block_k, num_warps=2, num_stages=2 if block_n <= 16 else 3, rows=4)
    small = pixels <= 16384
    return Tiles(block_m=64 if small else 128, block_n=block_n, block_k=block_k,
                 num_warps=8 if small and block_n >= 128 else 4, num_stages=3)


def check_offsets(*numels: int) -> None:
    """The kernels' offsets are 32-bit: refuse tensors of 2**31 elements or more before launching."""
    if max(numels) >= 2 ** 31:
        raise ValueError("every activation must have fewer than 2**31 elements (the kernels' offsets are 32-bit); "
                         "split the batch")


def kernel_constants(c_out: int, channels: tuple[int, int, int, int], tiles: Tiles, width: int, *,
                     table: bool, per_image: bool, silu: bool, residual: bool) -> dict:
    """The compile-time constants of a launch (one compiled kernel per distinct set): the channel
    blocks ``channels`` = (3x3 ``x``, 3x3 ``skip``, 1x1 shortcut, 1x1 shortcut; 0 where absent),
    the tiles and the epilogue. ``bench/sass_report.py`` compiles kernels from the same constants."""
    ca, cb, sa, sb = channels
    block_k1 = tiles.block_k if all(c % tiles.block_k == 0 for c in (sa, sb)) else 16
    constants = dict(CA=ca, CB=cb, SA=sa, SB=sb, HAS_B=cb > 0, HAS_SA=sa > 0, HAS_SB=sb > 0, BIAS_TABLE=table,
                     BIAS_PER_IMAGE=per_image, SILU=silu, RESIDUAL=residual, BLOCK_N=tiles.block_n,
                     BLOCK_K=tiles.block_k, BLOCK_K1=block_k1, FAST_MATH=not interpreting(),
                     EVEN_N=c_out % tiles.block_n == 0)
    if tiles.rows:
        constants["W"] = width  # the row tiles' width is a compile-time constant
    else:
        constants["BLOCK_M"] = tiles.block_m
    return constants


def border_table(bias_map: torch.Tensor) -> torch.Tensor:
    """[H, W, C] -> [3, 3, C]: a bias map that depends only on whether a pixel is in the first, an
    inside or the last row and column (as a 3x3 convolution of a constant with zero padding is),
    by its values at those nine places. ``expand_border_table`` inverts it."""
    h, w = bias_map.shape[:2]
    return bias_map[[0, min(1, h - 1), h - 1]][:, [0, min(1, w - 1), w - 1]].contiguous()


def expand_border_table(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[3, 3, C] -> the [H, W, C] map it stands for."""
    rows = torch.ones(h, dtype=torch.long)
    rows[0], rows[-1] = 0, 2
    cols = torch.ones(w, dtype=torch.long)
    cols[0], cols[-1] = 0, 2
    return table[rows.to(table.device)][:, cols.to(table.device)]


def pack_weights(conv3: list[torch.Tensor], conv1: list[torch.Tensor]) -> torch.Tensor:
    """[C_out, C_i, 3, 3] blocks and [C_out, C_j, 1, 1] blocks -> one [K, C_out] matrix, K =
    9 * sum C_i + sum C_j, in the order the kernel reduces over (see the module doc)."""
    rows = [w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]) for w in conv3]  # (dy, dx, c) x C_out
    rows += [w.reshape(w.shape[0], w.shape[1]).t() for w in conv1]
    return torch.cat(rows, 0).contiguous()


def _conv3x3_part(acc, x_ptr, C: tl.constexpr, w_ptr, w_row0, COUT, base, nb, cols, in_cols, W,
                  BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr):
    """acc += the 3x3 convolution of one C-channel NHWC block, weights from packed row w_row0 on.
    ``base``: each output pixel's flat index; ``nb``: its 9-bit mask of taps inside the image."""
    ks = tl.arange(0, BLOCK_K)
    CHUNKS: tl.constexpr = C // BLOCK_K
    for kk in range(0, 9 * CHUNKS):  # (tap, channel chunk)
        tap = kk // CHUNKS
        c0 = (kk % CHUNKS) * BLOCK_K
        shift = ((tap // 3 - 1) * W + (tap % 3 - 1)) * C + c0  # the neighbour's offset, the same for every pixel
        ok = (nb & (1 << tap)) != 0  # else zero padding
        a = tl.load(x_ptr + (base + shift)[:, None] + ks[None, :], mask=ok[:, None], other=0.0)
        w_rows = (w_row0 + tap * C + c0 + ks)[:, None] * COUT + cols[None, :]
        if EVEN_N:
            b = tl.load(w_ptr + w_rows)
        else:
            b = tl.load(w_ptr + w_rows, mask=in_cols[None, :], other=0.0)
        acc += tl.dot(a, b)
    return acc


def _conv1x1_part(acc, x_ptr, C, w_ptr, w_row0, COUT, rows, cols, in_rows, in_cols, BLOCK_K: tl.constexpr):
    """acc += the 1x1 convolution of one C-channel NHWC block, weights from packed row w_row0 on."""
    ks = tl.arange(0, BLOCK_K)
    for c0 in range(0, C, BLOCK_K):
        a = tl.load(x_ptr + rows[:, None] * C + (c0 + ks)[None, :], mask=in_rows[:, None], other=0.0)
        b = tl.load(w_ptr + (w_row0 + c0 + ks)[:, None] * COUT + cols[None, :], mask=in_cols[None, :], other=0.0)
        acc += tl.dot(a, b)
    return acc


def _epilogue(acc, pix, h, w, H, W, cols, in_cols, ok_rows, bias_ptr, res_ptr, out_ptr, COUT,
              BIAS_TABLE: tl.constexpr, BIAS_PER_IMAGE: tl.constexpr, SILU: tl.constexpr, RESIDUAL: tl.constexpr,
              FAST_MATH: tl.constexpr):
    """out[pix] = [silu](acc + bias) [+ residual] for the output pixels ``pix`` at (h, w)."""
    both = ok_rows[:, None] & in_cols[None, :]
    if BIAS_TABLE:  # [(N,) 3, 3, COUT]: the bias by border class (first / inside / last row and column)
        row = (tl.where(h == 0, 0, tl.where(h == H - 1, 2, 1)) * 3
               + tl.where(w == 0, 0, tl.where(w == W - 1, 2, 1)))
        if BIAS_PER_IMAGE:
            row += 9 * (pix // (H * W))
        acc += tl.load(bias_ptr + row[:, None] * COUT + cols[None, :], mask=both, other=0.0)
    elif BIAS_PER_IMAGE:  # [N, COUT]
        acc += tl.load(bias_ptr + (pix // (H * W))[:, None] * COUT + cols[None, :], mask=both, other=0.0)
    else:
        acc += tl.load(bias_ptr + cols, mask=in_cols, other=0.0)[None, :]
    if SILU:
        if FAST_MATH:  # sigmoid(x) = (1 + tanh(x / 2)) / 2, tanh by one special-function instruction
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [0.5 * acc], dtype=tl.float32,
                                          is_pure=True, pack=1)
            acc = acc * (0.5 + 0.5 * t)
        else:  # IEEE exp and division: about three times the instructions
            acc = acc * tl.sigmoid(acc)
    if RESIDUAL:
        acc += tl.load(res_ptr + pix[:, None] * COUT + cols[None, :], mask=both, other=0.0).to(tl.float32)
    tl.store(out_ptr + pix[:, None] * COUT + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=both)


def _fused_conv_kernel(
    xa_ptr, xb_ptr, sa_ptr, sb_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    M, H, W, CA: tl.constexpr, CB: tl.constexpr, SA: tl.constexpr, SB: tl.constexpr, COUT,
    HAS_B: tl.constexpr, HAS_SA: tl.constexpr, HAS_SB: tl.constexpr,
    BIAS_TABLE: tl.constexpr, BIAS_PER_IMAGE: tl.constexpr, SILU: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_K1: tl.constexpr,
    FAST_MATH: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Tiles of BLOCK_M flattened output pixels: each tap's neighbours loaded from global memory."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, h, w) flattened
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    in_rows = rows < M
    in_cols = cols < COUT
    hw = rows % (H * W)
    h = hw // W
    w = hw % W
    # bit 3 * (dy + 1) + (dx + 1) set where the neighbour (h + dy, w + dx) is inside the image
    ry = tl.where(h > 0, 7, 6) & tl.where(h < H - 1, 7, 3)  # rows dy = -1, 0, 1 present
    rx = tl.where(w > 0, 7, 6) & tl.where(w < W - 1, 7, 3)
    nb = tl.where(in_rows, ((ry & 1) * rx) | ((ry & 2) * 4 * rx) | ((ry & 4) * 16 * rx), 0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _conv3x3_part(acc, xa_ptr, CA, w_ptr, 0, COUT, rows * CA, nb, cols, in_cols, W, BLOCK_K, EVEN_N)
    if HAS_B:  # the second block of a concatenation (an up block's skip)
        acc = _conv3x3_part(acc, xb_ptr, CB, w_ptr, 9 * CA, COUT, rows * CB, nb, cols, in_cols, W,
                            BLOCK_K, EVEN_N)
    if HAS_SA:  # 1x1 shortcut
        acc = _conv1x1_part(acc, sa_ptr, SA, w_ptr, 9 * (CA + CB), COUT, rows, cols, in_rows, in_cols, BLOCK_K1)
    if HAS_SB:
        acc = _conv1x1_part(acc, sb_ptr, SB, w_ptr, 9 * (CA + CB) + SA, COUT, rows, cols, in_rows, in_cols,
                            BLOCK_K1)
    _epilogue(acc, rows, h, w, H, W, cols, in_cols, in_rows, bias_ptr, res_ptr, out_ptr, COUT,
              BIAS_TABLE, BIAS_PER_IMAGE, SILU, RESIDUAL, FAST_MATH)


# --- tiles of four whole image rows ---------------------------------------------------------------
# A program computes image rows r0 .. r0 + 3 of one image. For each dx it loads the six rows r0 - 1 ..
# r0 + 4, shifted by dx, once, and each loaded row serves up to three output rows (as their dy = -1,
# 0, +1 tap): 18 row loads per four output rows instead of 36. The taps' re-reads from L2 are what
# bounds the flat tiles on the up blocks' two-input launches (Nsight Compute on an H100: L2 86% busy
# at 64x64 with 96 input channels). With 2 warps (Ampere-style mma.sync instead of Hopper's
# warpgroup MMA) every 32- and 64-wide launch of the reference network ran 3-21% faster than the
# flat tiles; docs/performance.md has the measurements.

def _conv3x3_rows_part(acc0, acc1, acc2, acc3, x_ptr, C: tl.constexpr, w_ptr, w_row0, COUT, base, r0, H, w,
                       cols, in_cols, W: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr):
    """acc_j += the 3x3 convolution of one C-channel block at output row r0 + j (pixels base + j * W + w)."""
    ks = tl.arange(0, BLOCK_K)
    CHUNKS: tl.constexpr = C // BLOCK_K
    top = (w * 0 + r0) > 0  # the row above the tile is inside the image
    bottom = (w * 0 + r0 + 4) < H  # and the row below it
    for kk in range(0, 3 * CHUNKS):  # (dx, channel chunk)
        dx = kk // CHUNKS - 1
        c0 = (kk % CHUNKS) * BLOCK_K
        ok = (w + dx >= 0) & (w + dx < W)  # else zero padding
        p = x_ptr + ((base - W + w + dx) * C + c0)[:, None] + ks[None, :]  # row r0 - 1, shifted by dx
        a0 = tl.load(p, mask=(ok & top)[:, None], other=0.0)
        a1 = tl.load(p + W * C, mask=ok[:, None], other=0.0)
        a2 = tl.load(p + 2 * W * C, mask=ok[:, None], other=0.0)
        a3 = tl.load(p + 3 * W * C, mask=ok[:, None], other=0.0)
        a4 = tl.load(p + 4 * W * C, mask=ok[:, None], other=0.0)
        a5 = tl.load(p + 5 * W * C, mask=(ok & bottom)[:, None], other=0.0)
        q = w_ptr + (w_row0 + (dx + 1) * C + c0 + ks)[:, None] * COUT + cols[None, :]  # tap (dy = -1, dx)
        if EVEN_N:
            wm = tl.load(q)
            w0 = tl.load(q + 3 * C * COUT)  # dy = 0
            wp = tl.load(q + 6 * C * COUT)  # dy = +1
        else:
            wm = tl.load(q, mask=in_cols[None, :], other=0.0)
            w0 = tl.load(q + 3 * C * COUT, mask=in_cols[None, :], other=0.0)
            wp = tl.load(q + 6 * C * COUT, mask=in_cols[None, :], other=0.0)
        acc0 = _three_taps(acc0, a0, a1, a2, wm, w0, wp)
        acc1 = _three_taps(acc1, a1, a2, a3, wm, w0, wp)
        acc2 = _three_taps(acc2, a2, a3, a4, wm, w0, wp)
        acc3 = _three_taps(acc3, a3, a4, a5, wm, w0, wp)
    return acc0, acc1, acc2, acc3


def _three_taps(acc, above, at, below, wm, w0, wp):
    """acc += one output row's dy = -1, 0, +1 taps (for one dx): the rows above, at and below it."""
    acc = tl.dot(above, wm, acc)
    acc = tl.dot(at, w0, acc)
    return tl.dot(below, wp, acc)


def _conv1x1_rows_part(acc0, acc1, acc2, acc3, x_ptr, C: tl.constexpr, w_ptr, w_row0, COUT, base, w, cols,
                       in_cols, W: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr):
    """acc_j += the 1x1 convolution of one C-channel block at output row r0 + j."""
    ks = tl.arange(0, BLOCK_K)
    for c0 in range(0, C, BLOCK_K):
        p = x_ptr + ((base + w) * C + c0)[:, None] + ks[None, :]
        a0 = tl.load(p)
        a1 = tl.load(p + W * C)
        a2 = tl.load(p + 2 * W * C)
        a3 = tl.load(p + 3 * W * C)
        q = w_ptr + (w_row0 + c0 + ks)[:, None] * COUT + cols[None, :]
        if EVEN_N:
            b = tl.load(q)
        else:
            b = tl.load(q, mask=in_cols[None, :], other=0.0)
        acc0 = tl.dot(a0, b, acc0)
        acc1 = tl.dot(a1, b, acc1)
        acc2 = tl.dot(a2, b, acc2)
        acc3 = tl.dot(a3, b, acc3)
    return acc0, acc1, acc2, acc3


def _fused_conv_rows_kernel(
    xa_ptr, xb_ptr, sa_ptr, sb_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    H, W: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, SA: tl.constexpr, SB: tl.constexpr, COUT,
    HAS_B: tl.constexpr, HAS_SA: tl.constexpr, HAS_SB: tl.constexpr,
    BIAS_TABLE: tl.constexpr, BIAS_PER_IMAGE: tl.constexpr, SILU: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_K1: tl.constexpr, FAST_MATH: tl.constexpr,
    EVEN_N: tl.constexpr,
):
    """What ``_fused_conv_kernel`` computes, by tiles of four whole image rows (H % 4 == 0)."""
    blocks = H // 4
    r0 = (tl.program_id(0) % blocks) * 4
    base = (tl.program_id(0) // blocks * H + r0) * W  # the tile's first output pixel
    w = tl.arange(0, W)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_cols = cols < COUT
    acc0 = tl.zeros((W, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((W, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((W, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((W, BLOCK_N), dtype=tl.float32)
    acc0, acc1, acc2, acc3 = _conv3x3_rows_part(acc0, acc1, acc2, acc3, xa_ptr, CA, w_ptr, 0, COUT, base, r0, H, w,
                                                cols, in_cols, W, BLOCK_K, EVEN_N)
    if HAS_B:
        acc0, acc1, acc2, acc3 = _conv3x3_rows_part(acc0, acc1, acc2, acc3, xb_ptr, CB, w_ptr, 9 * CA, COUT, base,
                                                    r0, H, w, cols, in_cols, W, BLOCK_K, EVEN_N)
    if HAS_SA:
        acc0, acc1, acc2, acc3 = _conv1x1_rows_part(acc0, acc1, acc2, acc3, sa_ptr, SA, w_ptr, 9 * (CA + CB), COUT,
                                                    base, w, cols, in_cols, W, BLOCK_K1, EVEN_N)
    if HAS_SB:
        acc0, acc1, acc2, acc3 = _conv1x1_rows_part(acc0, acc1, acc2, acc3, sb_ptr, SB, w_ptr, 9 * (CA + CB) + SA,
                                                    COUT, base, w, cols, in_cols, W, BLOCK_K1, EVEN_N)
    every = w < W
    row = w * 0 + r0
    _epilogue(acc0, base + w, row, w, H, W, cols, in_cols, every, bias_ptr, res_ptr, out_ptr, COUT,
              BIAS_TABLE, BIAS_PER_IMAGE, SILU, RESIDUAL, FAST_MATH)
    _epilogue(acc1, base + W + w, row + 1, w, H, W, cols, in_cols, every, bias_ptr, res_ptr, out_ptr, COUT,
              BIAS_TABLE, BIAS_PER_IMAGE, SILU, RESIDUAL, FAST_MATH)
    _epilogue(acc2, base + 2 * W + w, row + 2, w, H, W, cols, in_cols, every, bias_ptr, res_ptr, out_ptr, COUT,
              BIAS_TABLE, BIAS_PER_IMAGE, SILU, RESIDUAL, FAST_MATH)
    _epilogue(acc3, base + 3 * W + w, row + 3, w, H, W, cols, in_cols, every, bias_ptr, res_ptr, out_ptr, COUT,
              BIAS_TABLE, BIAS_PER_IMAGE, SILU, RESIDUAL, FAST_MATH)


if triton is not None:  # compiled on first launch (or interpreted under TRITON_INTERPRET=1)
    _conv3x3_part = triton.jit(_conv3x3_part)
    _conv1x1_part = triton.jit(_conv1x1_part)
    _epilogue = triton.jit(_epilogue)
    _fused_conv_kernel = triton.jit(_fused_conv_kernel)
    _three_taps = triton.jit(_three_taps)
    _conv3x3_rows_part = triton.jit(_conv3x3_rows_part)
    _conv1x1_rows_part = triton.jit(_conv1x1_rows_part)
    _fused_conv_rows_kernel = triton.jit(_fused_conv_rows_kernel)


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1 before Triton's import)."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


def fused_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
               skip: torch.Tensor | None = None, shortcut: tuple[torch.Tensor, ...] = (),
               residual: torch.Tensor | None = None, silu: bool = False,
               tiles: Tiles | None = None) -> torch.Tensor:
    """``[silu](conv3x3(cat[x, skip]) + conv1x1(cat[shortcut]) + bias) [+ residual]`` on NHWC tensors.

    x, skip: [N, H, W, C] (skip optional); shortcut: zero to two [N, H, W, C] tensors seen through
    1x1 convolutions; weight: ``pack_weights`` of the blocks in that order; bias (float32): [C_out],
    or [3, 3, C_out] by border class (``border_table`` of a bias map), either of them also one per
    image ([N, C_out], [N, 3, 3, C_out]); residual: [N, H, W, C_out]. Returns [N, H, W, C_out] in
    x's dtype. On a GPU the SiLU uses the hardware's approximate tanh (relative error about 2^-11,
    below bf16's rounding); under the interpreter it is exact.
    """
    n, hh, ww, ca = x.shape
    cb = skip.shape[-1] if skip is not None else 0
    if len(shortcut) > 2:
        raise ValueError("at most two shortcut blocks")
    sa = shortcut[0].shape[-1] if len(shortcut) > 0 else 0
    sb = shortcut[1].shape[-1] if len(shortcut) > 1 else 0
    c_out = weight.shape[1]
    if weight.shape[0] != 9 * (ca + cb) + sa + sb:
        raise ValueError(f"packed weight has {weight.shape[0]} rows, expected 9 * ({ca} + {cb}) + {sa} + {sb}")
    for t in (x, skip, *shortcut, residual):
        if t is not None and (t.shape[:3] != (n, hh, ww) or not t.is_contiguous() or t.device != x.device):
            raise ValueError(f"every activation must be a contiguous [N, H, W, C] tensor of shape "
                             f"({n}, {hh}, {ww}, C) on {x.device}; got {tuple(t.shape)}")
    check_offsets(*[t.numel() for t in (x, skip, *shortcut, residual) if t is not None], n * hh * ww * c_out)
    if residual is not None and residual.shape[-1] != c_out:
        raise ValueError(f"residual has {residual.shape[-1]} channels, the output {c_out}")
    table, per_image = bias.dim() in (3, 4), bias.dim() in (2, 4)
    shapes = {1: (c_out,), 2: (n, c_out), 3: (3, 3, c_out), 4: (n, 3, 3, c_out)}
    if bias.shape != shapes.get(bias.dim()) or not bias.is_contiguous() or bias.device != x.device:
        raise ValueError(f"bias must be a contiguous [{c_out}], per image [{n}, {c_out}], a border table "
                         f"[3, 3, {c_out}] or one per image [{n}, 3, 3, {c_out}] on {x.device}; got {tuple(bias.shape)}")
    t = tiles or default_tiles(c_out, (ca, cb), n * hh * ww, (hh, ww))
    if t.rows and (t.rows != 4 or hh % 4 or ww < 16 or ww & (ww - 1)):
        raise ValueError(f"row tiles take 4 rows of maps whose height is a multiple of 4 and whose width is a power "
                         f"of two >= 16; got rows={t.rows} for {hh}x{ww}")
    if any(c % t.block_k for c in (ca, cb)) or t.block_k < 16:
        raise ValueError(f"3x3 channel counts {(ca, cb)} must be multiples of block_k={t.block_k} (>= 16)")
    if any(c % 16 for c in (sa, sb)):
        raise ValueError(f"1x1 channel counts {(sa, sb)} must be multiples of 16")
    if triton is None:
        raise RuntimeError("the fused convolution needs Triton (pip install triton)")
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError("the fused convolution runs on CUDA (or, for tests, under TRITON_INTERPRET=1)")
    out = torch.empty(n, hh, ww, c_out, device=x.device, dtype=x.dtype)
    launch = {} if interpreting() else {"num_warps": t.num_warps, "num_stages": t.num_stages}
    tensors = (x, skip if skip is not None else x, shortcut[0] if sa else x, shortcut[1] if sb else x,
               weight, bias, residual if residual is not None else x, out)
    constants = kernel_constants(c_out, (ca, cb, sa, sb), t, ww, table=table, per_image=per_image, silu=silu,
                                 residual=residual is not None)
    if t.rows:
        grid = (n * hh // 4, triton.cdiv(c_out, t.block_n))
        _fused_conv_rows_kernel[grid](*tensors, H=hh, COUT=c_out, **constants, **launch)
    else:
        grid = (triton.cdiv(n * hh * ww, t.block_m), triton.cdiv(c_out, t.block_n))
        _fused_conv_kernel[grid](*tensors, M=n * hh * ww, H=hh, W=ww, COUT=c_out, **constants, **launch)
    return out


def reference_conv(x, weight3: list[torch.Tensor], weight1: list[torch.Tensor], bias, *, skip=None,
                   shortcut=(), residual=None, silu=False) -> torch.Tensor:
    """What ``fused_conv`` computes, written with PyTorch's convolutions (NHWC in and out; float64
    friendly): the specification the kernel is tested against."""
    if bias.dim() == 2:  # per image: [N, C] -> [N, 1, 1, C]
        bias = bias[:, None, None, :]
    elif bias.dim() == 3:
        bias = expand_border_table(bias, x.shape[1], x.shape[2])
    elif bias.dim() == 4:
        bias = torch.stack([expand_border_table(b, x.shape[1], x.shape[2]) for b in bias])
    nchw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    inputs = [x] + ([skip] if skip is not None else [])
    y = sum(torch.nn.functional.conv2d(nchw(t), w, padding=1) for t, w in zip(inputs, weight3))
    for t, w in zip(shortcut, weight1):
        y = y + torch.nn.functional.conv2d(nchw(t), w)
    y = y.permute(0, 2, 3, 1) + bias
    if silu:
        y = torch.nn.functional.silu(y)
    if residual is not None:
        y = y + residual
    return y
