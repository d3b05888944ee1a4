"""The app's requests (``explorer_ui.requests``): each builder's checks, with the user's messages,
and the caches keyed on the request itself (equal requests share one computation)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from diffusion_core import generate as G
from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.samplers import SamplerConfig
from explorer_ui import cache, plans, requests
from tests.helpers import make_tiny_checkpoint, random_images, tiny_experiment

REF = requests.ModelRef("/models/tiny.json", (("tiny.json", 1, 2),), "cpu")


def stand_in(image_size: int = 16, schedule: str = "continuous_cosine") -> SimpleNamespace:
    """What the builders read of a model: its experiment (schedule and image size)."""
    return SimpleNamespace(experiment=tiny_experiment(image_size=image_size, schedule=schedule))


def test_grid_request_checks_steps_size_and_seeds():
    model = stand_in()
    request = requests.grid(REF, model, 7, 3, SamplerConfig("ddpm", 1000))
    assert request == requests.GridRequest(REF, (7, 8, 9), SamplerConfig("ddpm", 1000))
    assert request.evaluations == 3000
    with pytest.raises(ValueError, match="1001 steps is beyond this model's schedule: choose 1 to 1000"):
        requests.grid(REF, model, 0, 4, SamplerConfig("ddim", 1001))
    with pytest.raises(ValueError, match="1000 steps is beyond this model's schedule: choose 1 to 100"):
        requests.grid(REF, SimpleNamespace(experiment=tiny_experiment(schedule="linear").with_overrides(
            schedule={"num_timesteps": 100})), 0, 4, SamplerConfig("ddim", 1000))
    with pytest.raises(ValueError, match="more than the 256 one grid may hold"):
        requests.grid(REF, model, 0, 300, SamplerConfig("ddim", 10))
    with pytest.raises(ValueError, match="at this size choose at most 64 images"):
        requests.grid(REF, stand_in(image_size=256), 0, 65, SamplerConfig("ddim", 10))
    with pytest.raises(ValueError, match=r"seeds must be from 0 to 2\*\*63 - 1"):
        requests.grid(REF, model, 2**63 - 1, 2, SamplerConfig("ddim", 10))


def test_sweep_is_one_grid_per_step_count_that_fits_together():
    grids = requests.sweep(REF, stand_in(), 3, 2, [20, 5, 10])
    assert [g.sampler for g in grids] == [SamplerConfig("ddim", s) for s in (5, 10, 20)]
    assert {g.seeds for g in grids} == {(3, 4)}
    with pytest.raises(ValueError, match="choose at least one step count"):
        requests.sweep(REF, stand_in(), 0, 1, [])
    assert len(requests.sweep(REF, stand_in(image_size=256), 0, 32, [5, 10])) == 2  # 64 cells of 256 px fit
    with pytest.raises(ValueError, match="too large a grid"):  # 3 x 30 cells of 256 px do not
        requests.sweep(REF, stand_in(image_size=256), 0, 30, [5, 10, 20])


def test_trajectory_request_fits_memory():
    assert requests.trajectory(REF, stand_in(), 5, SamplerConfig("ddim", 1000)).seed == 5
    assert requests.trajectory(REF, stand_in(image_size=320), 0, SamplerConfig("ddim", 61)).sampler.num_steps == 61
    with pytest.raises(ValueError, match="choose at most 61 steps at this size"):
        requests.trajectory(REF, stand_in(image_size=320), 0, SamplerConfig("ddim", 62))


def test_interpolation_needs_a_deterministic_sampler_and_two_keys():
    model = stand_in()
    assert requests.interpolation(REF, model, 5, SamplerConfig("dpmpp_2m", 10), [3, 17]).seeds == (3, 17)
    for sampler in (SamplerConfig("ddpm", 10), SamplerConfig("ddim", 10, 0.5)):
        with pytest.raises(ValueError, match="interpolation needs a deterministic sampler"):
            requests.interpolation(REF, model, 5, sampler, [3, 17])
    with pytest.raises(ValueError, match="give at least two seeds"):
        requests.interpolation(REF, model, 5, SamplerConfig("ddim", 10), [3])
    with pytest.raises(ValueError, match=f"choose 2 to {plans.MAX_FRAMES} frames"):
        requests.interpolation(REF, model, 1, SamplerConfig("ddim", 10), [3, 17])
    start = requests.inversion(REF, model, random_images(2, 16), 10)
    through_images = requests.interpolation(REF, model, 5, SamplerConfig("ddim", 10), [3, 17], start)
    assert through_images.seeds == () and through_images.start == start


def test_inversion_request_holds_the_images_as_a_value():
    images = random_images(2, 16, seed=4)
    request = requests.inversion(REF, stand_in(), images, 10)
    np.testing.assert_array_equal(request.images.array(), images)
    again = requests.inversion(REF, stand_in(), images.copy(), 10)
    assert request == again and hash(request) == hash(again)
    assert request != requests.inversion(REF, stand_in(), images[::-1].copy(), 10)
    with pytest.raises(ValueError, match="this model takes 16x16 images, got 32x32"):
        requests.inversion(REF, stand_in(), random_images(2, 32), 10)
    with pytest.raises(ValueError, match="beyond this model's schedule"):
        requests.inversion(REF, stand_in(), images, 1001)
    with pytest.raises(ValueError, match=r"uint8 \[N x H x W x 3\]"):
        requests.Images.of(images.astype(np.float32))


def test_caches_key_on_the_request(tmp_path):
    """Equal requests, however their numbers were typed, are one cache entry; another seed or
    sampler is another; the cached images are the core's."""
    path = make_tiny_checkpoint(tmp_path, "tiny")
    ref = requests.ModelRef(str(path), (("tiny.json", 0, 0),), "cpu")
    model = load_checkpoint(path)
    cache.sample_images.clear()
    before = cache.MISSES["sample"]
    a = requests.grid(ref, model, 0, 2, SamplerConfig("ddim", 3, 0))
    b = requests.grid(ref, model, np.int64(0), 2, SamplerConfig("ddim", np.int64(3), 0.0))
    images, _ = cache.sample_images(a)
    again, _ = cache.sample_images(b)
    assert cache.MISSES["sample"] == before + 1
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(images, G.generate(model, [0, 1], SamplerConfig("ddim", 3)))
    cache.sample_images(requests.grid(ref, model, 1, 2, SamplerConfig("ddim", 3)))
    cache.sample_images(requests.grid(ref, model, 0, 2, SamplerConfig("dpmpp_2m", 3)))
    assert cache.MISSES["sample"] == before + 3
