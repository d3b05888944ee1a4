"""The app's caches, all in one place.

``st.cache_resource`` holds loaded models, shared by every session: keyed by the description's
path, the stamps (name, mtime, size) of its files and the device, so a re-exported checkpoint is
loaded afresh. A ``LoadedModel`` is frozen and in eval mode; nothing here mutates it.

``st.cache_data`` holds arrays (sample grids, trajectories, interpolation frames, inversions),
keyed by the page's request itself (``requests``: the model's identity and every parameter), so
sessions share results only when they asked for exactly the same thing. Figures are never cached:
pages build them from these arrays on every run. Every sampling step holds the device's inference
lock, one step at a time (``compute.stepwise``; the reason is in that module). A computation takes
the page's ``compute.Job`` as ``_job`` (not part of the key): it shows progress and ends the
computation, uncached, when the visitor stops or leaves.

The Sample page's nearest training images use the FID Inception network (``st.cache_resource``,
keyed by its weights file) and the features of a checkpoint's training images (``st.cache_data``,
keyed by the data set; computed once into ``.cache/fid`` on disk, which every session reuses).

``MISSES`` counts cache misses per function, for the tests and the curious.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import streamlit as st
import torch

from diffusion_core import fid
from diffusion_core import generate as G
from diffusion_core.checkpoint import LoadedModel, load_checkpoint
from diffusion_core.evaluation import cached_features
from diffusion_core.guidance import guidance
from diffusion_core.images import gif_bytes, make_grid
from diffusion_core.samplers import SamplerConfig, StepState

from . import catalog, compute, neighbours, plans, timeline
from .requests import (INVERSION_ITERATIONS, GridRequest, InterpolationRequest, InversionRequest, ModelRef,
                       TrajectoryRequest)

MISSES: Counter[str] = Counter()


@st.cache_resource(max_entries=8, show_spinner="Loading the checkpoint...")
def _load_model(path: str, stamps: tuple, device: str) -> LoadedModel:
    MISSES["model"] += 1
    return load_checkpoint(path, device)


def get_model(ref: ModelRef) -> LoadedModel:
    return _load_model(ref.path, ref.stamps, ref.device)


@st.cache_data(max_entries=16, show_spinner=False)
def scan_folder(folder: str, stamp: tuple) -> list[catalog.Entry]:
    """``catalog.scan`` of a folder, redone when a file in it changes (``stamp``)."""
    MISSES["scan"] += 1
    return catalog.scan(folder)


@st.cache_data(max_entries=64, show_spinner=False)
def read_log(path: str, stamps: tuple) -> dict[str, list[float]]:
    return catalog.read_log(path)


@st.cache_data(max_entries=64, show_spinner=False)
def read_noise_loss(path: str, stamps: tuple) -> dict | None:
    return timeline.noise_loss(path)


def drive(ref: ModelRef, model: LoadedModel, job: compute.Job | None, calls_per_step: float = 1):
    """The core's ``drive``: the model's steps one at a time under the device's lock, for ``job``."""
    return compute.driver(ref.device, plans.gflops_per_image(model.experiment.network), job, calls_per_step)


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def sample_images(request: GridRequest, _job: compute.Job | None = None) -> tuple[np.ndarray, float]:
    """uint8 [N x H x W x 3] samples of the request's seeds (autoguided when it names a guide) and
    the seconds they took."""
    MISSES["sample"] += 1
    model = get_model(request.model)
    guide = guidance(model, get_model(request.guide), request.guidance) if request.guide is not None else None
    calls = 1.0
    if guide is not None and guide.active:  # the guide's network runs beside the model's at every step
        calls += plans.gflops_per_image(guide.guide.experiment.network) / plans.gflops_per_image(model.experiment.network)
    start = time.perf_counter()
    images = G.generate(model, list(request.seeds), request.sampler, guidance=guide,
                        drive=drive(request.model, model, _job, calls))
    return images, time.perf_counter() - start


PREVIEW_SEEDS, PREVIEW_SAMPLER = (0, 1, 2, 3), SamplerConfig("ddim", 10)


def preview_grid(ref: ModelRef) -> np.ndarray:
    """A small 2x2 grid (seeds 0-3, DDIM 10 steps) for the experiments page (cached samples)."""
    images, _ = sample_images(GridRequest(ref, PREVIEW_SEEDS, PREVIEW_SAMPLER))
    return make_grid(images, cols=2)


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def trajectory(request: TrajectoryRequest, _job: compute.Job | None = None) -> G.Trajectory:
    """Every step of one seed's denoising (computed once, then scrubbed from the cache)."""
    MISSES["trajectory"] += 1
    model = get_model(request.model)
    return G.trajectory(model, request.seed, request.sampler, drive=drive(request.model, model, _job))


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def inversion(request: InversionRequest, _job: compute.Job | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DDIM-inverted noise float32 [N x C x H x W] of the request's images and their
    reconstructions, uint8 [N x H x W x 3]."""
    MISSES["inversion"] += 1
    model = get_model(request.model)
    calls = request.evaluations / request.image_steps  # network calls per step, on average
    noise, recon = G.invert(model, request.images.array(), request.num_steps, INVERSION_ITERATIONS,
                            drive=drive(request.model, model, _job, calls))
    return noise.float().cpu().numpy(), recon


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def interpolation(request: InterpolationRequest, method: str, _job: compute.Job | None = None) -> np.ndarray:
    """uint8 [frames x H x W x 3] along the ``method`` path through the seeds' noise, or through
    the inverted noise of the request's images."""
    MISSES["interpolation"] += 1
    keys = None if request.start is None else torch.from_numpy(inversion(request.start, _job)[0])
    model = get_model(request.model)
    return G.interpolation_frames(model, list(request.seeds), request.frames, method, request.sampler, keys,
                                  drive=drive(request.model, model, _job))


@st.cache_data(max_entries=16, show_spinner=False)
def gif(frames: np.ndarray, scale: int, duration_ms: int = 120) -> bytes:
    return gif_bytes(frames, duration_ms=duration_ms, scale=scale)


@st.cache_resource(max_entries=1, show_spinner="Loading the FID Inception network...")
def feature_extractor(weights: str) -> fid.FeatureExtractor:
    MISSES["extractor"] += 1
    return fid.load_feature_extractor(weights, "cpu")


class _Interleaved:
    """A feature extractor run one batch at a time under the CPU's inference lock, so that other
    sessions' sampling interleaves with a feature pass of minutes instead of waiting for it."""

    def __init__(self, extractor: neighbours.Extractor, batch_size: int = 32):
        self.extractor, self.batch_size = extractor, batch_size
        self.weights_id = extractor.weights_id

    def __call__(self, images: np.ndarray) -> np.ndarray:
        parts = []
        for s in range(0, len(images), self.batch_size):
            with compute.inference("cpu"):
                parts.append(self.extractor(images[s:s + self.batch_size]))  # (B, D)
        return np.concatenate(parts)


@st.cache_data(max_entries=2, ttl=3600, show_spinner=False)
def training_features(data: neighbours.TrainingData, weights: str) -> tuple[np.ndarray, float | None]:
    """FID features [M x 2048] of a checkpoint's training images (from ``.cache/fid`` when there)
    and their near-copy threshold (None when too costly)."""
    MISSES["training_features"] += 1
    images = neighbours.load_images(data)
    feats = cached_features(images.images, images.name, _Interleaved(feature_extractor(weights)),
                            neighbours.CACHE_ROOT / "fid")
    return feats, neighbours.near_copy_threshold(feats)


@st.cache_data(max_entries=64, ttl=3600, show_spinner=False)
def nearest_training_images(ref: ModelRef, data: neighbours.TrainingData, weights: str, sample: np.ndarray,
                            k: int = neighbours.K) -> dict:
    """``neighbours.nearest`` of one sample uint8 [S x S x 3] of the model ``ref`` (which only keys
    the result to the checkpoint)."""
    MISSES["neighbours"] += 1
    feats, threshold = training_features(data, weights)
    images = neighbours.load_images(data).images
    extractor = _Interleaved(feature_extractor(weights))
    return neighbours.nearest(sample, images, feats, extractor, k, threshold)


def live_steps(request: GridRequest, job: compute.Job | None = None) -> Iterator[StepState]:
    """The steps of the request's sampler, each computed under the device's inference lock (Live
    page: several viewers interleave step by step), for ``job`` (which may end them)."""
    model = get_model(request.model)
    return drive(request.model, model, job)(G.step_states(model, list(request.seeds), request.sampler))


def log_stamps(path: Path) -> tuple:
    return catalog.file_stamps([path])
