"""The caches of the view pages: arrays keyed by their requests (``view_requests``), computed with
the models ``cache`` holds and by its rules (models shared and never mutated, arrays per request,
figures never cached). Like ``cache``'s, every sampling step holds the device's inference lock,
one step at a time (``cache.drive``), so a long view shares the device step by step with every
other visitor; the page's ``compute.Job`` comes as ``_job`` (not part of the key): it shows
progress and ends the computation, uncached, when the visitor stops or leaves."""

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


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def xy_grid(request: XYGridRequest, _job: compute.Job | None = None) -> tuple[np.ndarray, float]:
    """uint8 cells [R x C x S x S x 3] of the grid and the seconds they took."""
    cache.MISSES["xy_grid"] += 1
    refs = dict(request.models)
    models = {label: cache.get_model(ref) for label, ref in refs.items()}
    drives = {label: cache.drive(ref, models[label], _job) for label, ref in refs.items()}
    start = time.perf_counter()
    return V.grid_images(request.cells, models, drives), time.perf_counter() - start


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def branch(request: BranchRequest, _job: compute.Job | None = None) -> V.BranchPictures:
    cache.MISSES["branch"] += 1
    model = cache.get_model(request.model)
    return V.branch(model, request.seed, request.original, request.k, request.branches,
                    cache.drive(request.model, model, _job))


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def variations(request: VariationsRequest, _job: compute.Job | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The seed's own image [H x W x 3] and its variations [V x H x W x 3], uint8."""
    cache.MISSES["variations"] += 1
    model = cache.get_model(request.model)
    drive = cache.drive(request.model, model, _job)
    own = V.decode(model, seed_noise([request.seed], model.image_shape), request.sampler, drive)[0]
    return own, V.variations(model, request.seed, request.variation_seeds, request.strength, request.sampler, drive)


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def walk(request: WalkRequest, _job: compute.Job | None = None) -> np.ndarray:
    cache.MISSES["walk"] += 1
    model = cache.get_model(request.model)
    return V.walk_frames(model, request.seed, request.towards, request.frames, request.sampler,
                         cache.drive(request.model, model, _job))


@st.cache_data(max_entries=16, ttl=3600, show_spinner=False)
def edit(request: EditRequest, _job: compute.Job | None = None) -> np.ndarray:
    """The edited image, uint8 [S x S x 3]."""
    cache.MISSES["edit"] += 1
    model = cache.get_model(request.model)
    size = model.experiment.network.image_size
    mask = None if request.region is None else E.rectangle_mask(size, *request.region)
    return E.edit_image(model, request.image.array()[0], request.sampler, request.strength, request.seed, mask,
                        cache.drive(request.model, model, _job))


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def geometry(request: GeometryRequest, _job: compute.Job | None = None) -> A.Geometry:
    cache.MISSES["geometry"] += 1
    model = cache.get_model(request.model)
    return A.trajectory_geometry(model, request.seeds, request.sampler, cache.drive(request.model, model, _job))


@st.cache_data(max_entries=8, ttl=3600, show_spinner=False)
def inversion_quality(request: InversionQualityRequest, _job: compute.Job | None = None
                      ) -> tuple[list[A.InversionRow], np.ndarray]:
    cache.MISSES["inversion_quality"] += 1
    model = cache.get_model(request.model)
    # network calls per step, on average over the rows' inversion steps (1 + refinement) and decoding steps (1)
    calls = request.evaluations / request.image_steps
    return A.inversion_quality(model, request.images.array(), request.step_counts, request.refinements,
                               cache.drive(request.model, model, _job, calls))
