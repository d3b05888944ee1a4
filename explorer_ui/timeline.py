"""A training run's timeline: the sample grids the trainer saves at fixed seeds
(``samples/epoch_NNNN.png`` in a run folder ``runs/NAME``, beside ``model.json``), in epoch order
(no streamlit). The files are read as untrusted images: Pillow's size limit applies, and a grid
that cannot be read is left out with its reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffusion_core.images import gif_bytes

GRID_NAME = re.compile(r"epoch_(\d{1,9})\.png")
MAX_GIF_FRAMES = 200
MAX_GIF_PIXELS = 200 * 1024 * 1024  # frames x H x W of one timeline GIF (its frames are held in memory)


def sample_grids(run: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every sample grid of a run folder, by epoch; [] when there is none."""
    folder = Path(run) / "samples"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := GRID_NAME.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


def is_run(json_path: Path) -> bool:
    """Whether a checkpoint description is a training run's (``model.json`` beside sample grids)."""
    return json_path.name == "model.json" and bool(sample_grids(json_path.parent))


def read_grid(path: Path) -> np.ndarray:
    """One grid as uint8 [H x W x 3]; ValueError naming the file if it is not a readable image."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
        raise ValueError(f"{path.name}: not a readable image ({e})") from None


def timeline_gif(grids: list[tuple[int, Path]], duration_ms: int = 400) -> bytes:
    """An animated GIF of the grids in epoch order (at most MAX_GIF_FRAMES, evenly picked); grids
    that cannot be read, or whose size differs from the first readable one, are left out."""
    picked = [grids[int(i)] for i in np.unique(np.linspace(0, len(grids) - 1, min(len(grids), MAX_GIF_FRAMES)))]
    frames = []
    for _, path in picked:
        try:
            frames.append(read_grid(path))
        except ValueError:
            continue
    if not frames:
        raise ValueError("this run has no readable sample grid yet")
    frames = [f for f in frames if f.shape == frames[0].shape]
    if len(frames) * frames[0].shape[0] * frames[0].shape[1] > MAX_GIF_PIXELS:
        raise ValueError("these sample grids are too large to animate together; download them one by one")
    return gif_bytes(np.stack(frames), duration_ms=duration_ms)
