"""The caches of the view pages: arrays keyed by their requests (``view_requests``), computed
under the device's inference lock with the models ``cache`` holds (see ``cache`` for the rules:
models shared and never mutated, arrays per request, figures never cached)."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from diffusion_core import analysis as A
from diffusion_core import edit as E
from diffusion_core import views as V
from diffusion_core.samplers import seed_noise

from . import cache, compute
from .view_requests import (BranchRequest, EditRequest, GeometryRequest, InversionQualityRequest, VariationsRequest,
                            WalkRequest, XYGridRequest)


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Sampling the grid...")
def xy_grid(request: XYGridRequest) -> tuple[np.ndarray, float]:
    """uint8 cells [R x C x S x S x 3] of the grid and the seconds they took."""
    cache.MISSES["xy_grid"] += 1
    refs = dict(request.models)
    models = {label: cache.get_model(ref) for label, ref in refs.items()}
    device = next(iter(refs.values())).device
    with compute.inference(device):
        start = time.perf_counter()
        return V.grid_images(request.cells, models), time.perf_counter() - start


@st.cache_data(max_entries=8, ttl=3600, show_spinner="Branching the trajectory...")
def branch(request: BranchRequest) -> V.BranchPictures:
    cache.MISSES["branch"] += 1
    model = cache.get_model(request.model)
    with compute.inference(request.model.device):
        return V.branch(model, request.seed, request.original, request.k, request.branches)


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Sampling the variations...")
def variations(request: VariationsRequest) -> tuple[np.ndarray, np.ndarray]:
    """The seed's own image [H x W x 3] and its variations [V x H x W x 3], uint8."""
    cache.MISSES["variations"] += 1
    model = cache.get_model(request.model)
    with compute.inference(request.model.device):
        own = V.decode(model, seed_noise([request.seed], model.image_shape), request.sampler)[0]
        return own, V.variations(model, request.seed, request.variation_seeds, request.strength, request.sampler)


@st.cache_data(max_entries=8, ttl=3600, show_spinner="Walking around the circle...")
def walk(request: WalkRequest) -> np.ndarray:
    cache.MISSES["walk"] += 1
    model = cache.get_model(request.model)
    with compute.inference(request.model.device):
        return V.walk_frames(model, request.seed, request.towards, request.frames, request.sampler)


@st.cache_data(max_entries=16, ttl=3600, show_spinner="Editing the image...")
def edit(request: EditRequest) -> np.ndarray:
    """The edited image, uint8 [S x S x 3]."""
    cache.MISSES["edit"] += 1
    model = cache.get_model(request.model)
    size = model.experiment.network.image_size
    mask = None if request.region is None else E.rectangle_mask(size, *request.region)
    with compute.inference(request.model.device):
        return E.edit_image(model, request.image.array()[0], request.sampler, request.strength, request.seed, mask)


@st.cache_data(max_entries=8, ttl=3600, show_spinner="Recording the trajectories...")
def geometry(request: GeometryRequest) -> A.Geometry:
    cache.MISSES["geometry"] += 1
    model = cache.get_model(request.model)
    with compute.inference(request.model.device):
        return A.trajectory_geometry(model, request.seeds, request.sampler)


@st.cache_data(max_entries=8, ttl=3600, show_spinner="Inverting and reconstructing...")
def inversion_quality(request: InversionQualityRequest) -> tuple[list[A.InversionRow], np.ndarray]:
    cache.MISSES["inversion_quality"] += 1
    model = cache.get_model(request.model)
    with compute.inference(request.model.device):
        return A.inversion_quality(model, request.images.array(), request.step_counts, request.refinements)
