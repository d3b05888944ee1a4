"""Turning uint8 image arrays [N x H x W x 3] into grids, strips, PNG and GIF bytes."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write_bytes


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """[N x H x W x 3] uint8 -> one [rows*(H+pad)+pad x cols*(W+pad)+pad x 3] uint8 image."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N x H x W x 3], got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    cols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    return atomic_write_bytes(path, png_bytes(image))  # a reader (the app) never sees half a grid


def gif_bytes(frames: np.ndarray, duration_ms: int = 80, scale: int = 1, loop: int = 0) -> bytes:
    """Animated GIF of frames [F x H x W x 3] uint8, each shown ``duration_ms``, upscaled by
    ``scale`` with nearest neighbour (small diffusion images are hard to see otherwise)."""
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected frames [F x H x W x 3], got {frames.shape}")
    pics = [Image.fromarray(f) for f in frames]
    if scale > 1:
        pics = [p.resize((p.width * scale, p.height * scale), Image.Resampling.NEAREST) for p in pics]
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=duration_ms, loop=loop)
    return buf.getvalue()
