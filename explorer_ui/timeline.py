"""A training run's timeline: the sample grids the trainer saves at fixed seeds
(``samples/epoch_NNNN.png`` in a run folder ``runs/NAME``, beside ``model.json``), in epoch order;
the loss by noise level that its log records; FID over the snapshots whose descriptions hold
evaluations (no streamlit). The files are read as untrusted: Pillow's size limit applies, a grid
that cannot be read is left out with its reason, and log lines that are not records are skipped."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffusion_core.images import gif_bytes

from .catalog import MAX_LOG_BYTES

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


def noise_loss(path: str | Path) -> dict[str, Any] | None:
    """The log's loss by noise level (``loss_by_noise`` of each record: the mean loss of the
    window's images in equal-width bins of the noise variance 1 - abar) as columns: {"x": epochs
    (or steps when the log has no epochs), "x_title", "edges": K + 1 bin edges, "means": K lists,
    NaN where a bin was empty}. None when no record has it (logs written before it existed)."""
    path = Path(path)
    if path.stat().st_size > MAX_LOG_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_LOG_BYTES >> 20} MiB")
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        means = rec.get("loss_by_noise") if isinstance(rec, dict) else None
        if isinstance(means, list) and means and isinstance(rec.get("step"), int):
            rows.append((rec.get("epoch"), rec["step"], [_finite(m) for m in means]))
    k = max((len(m) for _, _, m in rows), default=0)
    rows = [r for r in rows if len(r[2]) == k]  # one bin count per run
    if not rows:
        return None
    epochs = [_finite(e) for e, _, _ in rows]
    use_steps = any(math.isnan(e) for e in epochs)
    return {"x": [float(s) for _, s, _ in rows] if use_steps else epochs, "x_title": "step" if use_steps else "epoch",
            "edges": [i / k for i in range(k + 1)], "means": [[m[b] for _, _, m in rows] for b in range(k)]}


def fid_over_snapshots(descriptions: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float, int]]]:
    """FID of a run's snapshots against training: the evaluations that the run folder's checkpoint
    descriptions hold, one series per setting (sampler, steps, eta, samples, guide) as
    {label: [(epochs completed, FID, samples), ...] by epoch}; descriptions without
    ``training.epochs_completed`` or evaluations are left out."""
    series: dict[str, list[tuple[float, float, int]]] = {}
    for desc in descriptions:
        training, metrics = desc.get("training"), desc.get("metrics")
        epoch = _finite(training.get("epochs_completed")) if isinstance(training, dict) else math.nan
        evaluations = metrics.get("evaluations") if isinstance(metrics, dict) else None
        if math.isnan(epoch) or not isinstance(evaluations, list):
            continue
        for ev in evaluations:
            fid = _finite(ev.get("fid")) if isinstance(ev, dict) else math.nan
            if math.isnan(fid):
                continue
            label = f"{ev.get('sampler')} {ev.get('steps')} steps, eta {ev.get('eta')}, N = {ev.get('num_samples')}"
            if ev.get("guide"):
                label += f", guided by {ev['guide']} (w = {ev.get('guidance')})"
            series.setdefault(label, []).append((epoch, fid, ev.get("num_samples")))
    return {label: sorted(points) for label, points in sorted(series.items())}


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan
