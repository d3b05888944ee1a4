"""Image layouts the core does not make: labelled grids and strips (no streamlit)."""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin


def _upscale(images: np.ndarray, target: int) -> np.ndarray:
    factor = max(1, target // images.shape[1])
    return images.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else images


def common_size(sizes: Sequence[int], most: int = 4) -> int:
    """The size at which images of ``sizes`` pixels are shown side by side: their least common
    multiple (each upscaled by a whole factor, crisp) when that is at most ``most`` times the
    largest, else the largest (the others resampled)."""
    lcm = math.lcm(*sizes)
    return lcm if lcm <= most * max(sizes) else max(sizes)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N x S x S x 3] -> [N x size x size x 3]: nearest neighbour when ``size`` is a whole
    multiple of S, Lanczos otherwise."""
    n, s = images.shape[0], images.shape[1]
    if size % s == 0:
        f = size // s
        return images.repeat(f, axis=1).repeat(f, axis=2)
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in images]) \
        if n else np.zeros((0, size, size, 3), np.uint8)


def labelled_grid(cells: np.ndarray, col_labels: Sequence[str], row_labels: Sequence[str] | None = None,
                  cell: int = 96, pad: int = 4) -> np.ndarray:
    """uint8 cells [R x C x H x W x 3] -> one image with a label above each column (and left of
    each row), cells upscaled (nearest) to at least ``cell`` pixels."""
    if cells.ndim != 5 or cells.shape[-1] != 3:
        raise ValueError(f"expected cells [R x C x H x W x 3], got {cells.shape}")
    rows, cols = cells.shape[:2]
    if len(col_labels) != cols or (row_labels is not None and len(row_labels) != rows):
        raise ValueError("one label per column (and per row) is needed")
    flat = _upscale(cells.reshape(rows * cols, *cells.shape[2:]), cell)
    h, w = flat.shape[1:3]
    font = ImageFont.load_default()
    text_h = 14
    left = 0 if row_labels is None else max(int(font.getlength(s)) for s in row_labels) + 2 * pad
    width = left + cols * (w + pad) + pad
    height = text_h + pad + rows * (h + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels):
        x = left + pad + c * (w + pad)
        draw.text((x + (w - font.getlength(label)) / 2, 2), label, fill="black", font=font)
    for r in range(rows):
        y = text_h + pad + r * (h + pad)
        if row_labels is not None:
            draw.text((pad, y + h / 2 - 6), row_labels[r], fill="black", font=font)
        for c in range(cols):
            canvas.paste(Image.fromarray(flat[r * cols + c]), (left + pad + c * (w + pad), y))
    return np.asarray(canvas)


def trajectory_frames(x_t: np.ndarray, pred_x0: np.ndarray, linger: int = 8) -> np.ndarray:
    """Animation frames of a trajectory: x_t [S+1 x H x W x 3] beside predicted x0 [S x H x W x 3]
    (the final sample on both sides at the end, held for ``linger`` more frames)."""
    pred = np.concatenate([pred_x0, x_t[-1:]])
    gap = np.full((pred.shape[0], pred.shape[1], 2, 3), 255, np.uint8)
    frames = np.concatenate([x_t, gap, pred], axis=2)
    return np.concatenate([frames, np.repeat(frames[-1:], linger, axis=0)])


def png_with_note(image: np.ndarray, note: str) -> bytes:
    """PNG bytes of a uint8 [H x W x 3] image carrying a text chunk, so that the same pixels
    encoded with and without a note have different bytes (and so different media-file ids)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", note)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
