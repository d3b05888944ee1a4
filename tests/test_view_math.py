"""The views' core functions against their definitions: grids over two axes, branched
trajectories, a seed's neighbourhood in noise space, SDEdit and masked regeneration; and each of
them driven step by step as the app drives it (``explorer_ui.compute.driver``)."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint, random_images  # noqa: E402
from test_samplers import GaussianDenoiser  # noqa: E402

from diffusion_core import analysis as A  # noqa: E402
from diffusion_core import edit as E  # noqa: E402
from diffusion_core import generate as G  # noqa: E402
from diffusion_core import views as V  # noqa: E402
from diffusion_core.checkpoint import load_checkpoint  # noqa: E402
from diffusion_core.samplers import NoiseSource, SamplerConfig, sample, sample_steps, seed_noise  # noqa: E402
from diffusion_core.schedules import ScheduleConfig  # noqa: E402
from explorer_ui import compute  # noqa: E402

COSINE = ScheduleConfig(kind="continuous_cosine")
LINEAR = ScheduleConfig(kind="linear")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck")
    make_tiny_checkpoint(folder, "a", seed=0)
    make_tiny_checkpoint(folder, "b", seed=1, image_size=32)
    return {"a": load_checkpoint(folder / "a.json"), "b": load_checkpoint(folder / "b.json")}


# ------------------------------------------------------------------------------ grid over two axes
def test_axes_parse_and_label():
    assert V.parse_axis("seed", "3, 5-6").values == (3, 5, 6)
    assert V.parse_axis("steps", "10 20").values == (10, 20)
    assert V.parse_axis("eta", "0, 0.5, 1").values == (0.0, 0.5, 1.0)
    assert V.parse_axis("sampler", ["ddim", "ddpm"]).values == ("ddim", "ddpm")
    assert [V.axis_label("seed", 3), V.axis_label("steps", 20), V.axis_label("eta", 0.5),
            V.axis_label("sampler", "ddpm"), V.axis_label("checkpoint", "a")] == \
        ["seed 3", "20 steps", "eta 0.5", "DDPM (ancestral)", "a"]
    for name, text, message in [("steps", "10, x", "whole numbers"), ("eta", "2", "from 0 to 1"),
                                ("eta", "a", "must be numbers"), ("sampler", "euler", "unknown sampler 'euler'"),
                                ("steps", "", "at least one steps value"), ("seed", "0-99", "at most 16"),
                                ("colour", "1", "unknown grid axis")]:
        with pytest.raises(ValueError, match=message):
            V.parse_axis(name, text)
    with pytest.raises(ValueError, match="the same setting"):
        V.grid_cells(V.Cell("a", "ddim", 5, 0.0, 0), V.Axis("seed", (1,)), V.Axis("seed", (2,)))


def test_grid_cells_put_the_row_and_column_values_in():
    base = V.Cell("a", "ddim", 5, 0.0, 0)
    cells = V.grid_cells(base, V.Axis("steps", (3, 4)), V.Axis("eta", (0.0, 1.0, 0.5)))
    assert len(cells) == 2 and all(len(r) == 3 for r in cells)
    assert cells[1][2] == V.Cell("a", "ddim", 4, 0.5, 0)
    # a sampler without eta ignores the eta axis
    assert V.Cell("a", "dpmpp_2m", 5, 0.5, 0).config() == SamplerConfig("dpmpp_2m", 5)


def test_a_2x2_grid_holds_the_individually_generated_images(models):
    """checkpoint x seed and sampler x steps: each cell equals generate() for that cell alone."""
    base = V.Cell("a", "ddim", 4, 0.0, 7)
    cells = V.grid_cells(base, V.Axis("checkpoint", ("a", "b")), V.Axis("seed", (7, 11)))
    images = V.grid_images(cells, models)
    assert images.shape == (2, 2, 32, 32, 3)  # the 16 px model scaled up to the 32 px one
    for r, name in enumerate(("a", "b")):
        for c, seed in enumerate((7, 11)):
            alone = G.generate(models[name], [seed], SamplerConfig("ddim", 4))[0]
            f = 32 // alone.shape[0]
            np.testing.assert_array_equal(images[r, c], alone.repeat(f, 0).repeat(f, 1))
    cells = V.grid_cells(base, V.Axis("sampler", ("ddpm", "ddim")), V.Axis("steps", (3, 5)))
    images = V.grid_images(cells, models)
    for r, sampler in enumerate(("ddpm", "ddim")):
        for c, steps in enumerate((3, 5)):
            alone = G.generate(models["a"], [7], SamplerConfig(sampler, steps))[0]
            np.testing.assert_array_equal(images[r, c, :16, :16], alone)
    with pytest.raises(ValueError, match="beyond this model's schedule"):
        V.grid_images(V.grid_cells(base, V.Axis("steps", (1001,)), V.Axis("seed", (1,))), models)
    with pytest.raises(ValueError, match="'c' is not among"):
        V.grid_images(V.grid_cells(base, V.Axis("checkpoint", ("c",)), V.Axis("seed", (1,))), models)



def test_grid_steps_count_each_distinct_image_once():
    base = V.Cell("a", "ddim", 4, 0.0, 7)
    cells = V.grid_cells(base, V.Axis("sampler", ("ddim", "dpmpp_2m")), V.Axis("eta", (0.0, 0.5, 1.0)))
    assert V.grid_steps(cells) == (3 + 1) * 4  # DPM-Solver++ has no eta: its row is one image thrice
    cells = V.grid_cells(base, V.Axis("checkpoint", ("a", "b")), V.Axis("steps", (2, 5)))
    assert (V.grid_steps(cells), V.grid_steps(cells, "a"), V.grid_steps(cells, "b")) == (14, 7, 7)

# ----------------------------------------------------------------------------- branching at a step
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.6), ("ddpm", 0.0), ("dpmpp_2m", 0.0)])
def test_a_branch_with_the_original_settings_reproduces_the_original(sampler, eta):
    x_T = seed_noise([3], (3, 4, 4))
    config = SamplerConfig(sampler, 8, eta)
    direct = sample(sample_steps(GaussianDenoiser(), LINEAR, x_T, config, NoiseSource([3])))
    for k in (0, 5) if sampler != "dpmpp_2m" else (0,):  # a multistep branch restarts its history
        result = V.branch_trajectory(GaussianDenoiser(), LINEAR, x_T, config, 3, k, [V.Branch(sampler, eta, 3)])
        assert torch.equal(result.original.final, direct)
        assert torch.equal(result.branches[0].final, direct)
        assert result.distances.shape == (1, 8) and not result.distances.any()


def test_branches_share_the_steps_before_k_and_diverge_after():
    x_T = seed_noise([1], (3, 4, 4))
    config = SamplerConfig("ddim", 10, 0.0)
    result = V.branch_trajectory(GaussianDenoiser(), COSINE, x_T, config, 1, 4,
                                 [V.Branch("ddpm", 0.0, 9), V.Branch("ddim", 1.0, 2), V.Branch("dpmpp_2m")])
    d = result.distances
    assert d.shape == (3, 10)
    assert not d[:, :4].any()  # steps before k are the original's
    assert not d[:, 4].any()  # step k sees the same x_t, so the same prediction
    assert (d[:2, 5:] > 0).all()  # stochastic branches leave the original's path
    for run in result.branches:
        assert len(run.pred_x0) == 10 and torch.equal(run.pred_x0[3], result.original.pred_x0[3])
    with pytest.raises(ValueError, match="branch step must be from 0 to 9"):
        V.branch_trajectory(GaussianDenoiser(), COSINE, x_T, config, 1, 10, [V.Branch("ddim")])


def test_branch_pictures_of_a_model(models):
    model = models["a"]
    pics = V.branch(model, 5, SamplerConfig("ddim", 6), 2, [V.Branch("ddim", 0.0, 5), V.Branch("ddpm", 0.0, 8)])
    assert pics.original.shape == (7, 16, 16, 3) and pics.branches.shape == (2, 7, 16, 16, 3)
    np.testing.assert_array_equal(pics.original[-1], G.generate(model, [5], SamplerConfig("ddim", 6))[0])
    np.testing.assert_array_equal(pics.branches[0], pics.original)
    np.testing.assert_array_equal(pics.branches[1][:3], pics.original[:3])


# ---------------------------------------------------------------------------- a seed's neighbourhood
def test_rotation_keeps_the_norm_and_angle_zero_is_the_seed():
    z, fresh = seed_noise([0], (3, 8, 8)), 3.0 * seed_noise([1], (3, 8, 8))
    assert torch.equal(V.rotate_noise(z, fresh, 0.0), z)
    for angle in (0.1, 0.7, math.pi / 2, 2.0):
        r = V.rotate_noise(z, fresh, angle)
        assert float(r.norm()) == pytest.approx(float(z.norm()), rel=1e-6)
        cos = float((r.double() * z.double()).sum() / (r.double().norm() * z.double().norm()))
        assert cos == pytest.approx(math.cos(angle), abs=1e-6)  # the angle to the seed's noise
    w = V.orthonormal_partner(z, fresh)
    assert float((w.double() * z.double()).sum()) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="parallel"):
        V.rotate_noise(z, -2 * z, 0.3)
    with pytest.raises(ValueError, match="from 0 to pi"):
        V.rotate_noise(z, fresh, -0.1)


def test_circular_walk_is_closed_and_on_the_sphere():
    z, fresh = seed_noise([4], (3, 8, 8)), seed_noise([5], (3, 8, 8))
    walk = V.circular_walk(z, fresh, 12)
    assert walk.shape == (12, 3, 8, 8)
    assert torch.equal(walk[0], z[0])
    w = V.orthonormal_partner(z, fresh)
    after_last = V.circle_point(z, w, 12 / 12)  # the frame that would follow the last: the first again
    torch.testing.assert_close(after_last, walk[:1], rtol=0, atol=1e-5)
    norms = walk.reshape(12, -1).double().norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(z.double().norm())), rtol=1e-6, atol=0)
    steps = (walk[1:] - walk[:-1]).reshape(11, -1).norm(dim=1)
    closing = (walk[0] - walk[-1]).norm()
    torch.testing.assert_close(steps, torch.full_like(steps, float(closing)), rtol=1e-4, atol=0)  # even spacing


def test_variations_and_walk_of_a_model(models):
    model, config = models["a"], SamplerConfig("ddim", 4)
    same = V.variations(model, 3, [10, 11], 0.0, config)
    seed3 = G.generate(model, [3], config)[0]
    np.testing.assert_array_equal(same[0], seed3)
    np.testing.assert_array_equal(same[1], seed3)
    far = V.variations(model, 3, [10, 11], 0.5, config)
    assert not np.array_equal(far[0], far[1])
    walk = V.walk_frames(model, 3, 9, 6, config)
    assert walk.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(walk[0], seed3)
    with pytest.raises(ValueError, match="deterministic sampler"):
        V.variations(model, 3, [1], 0.2, SamplerConfig("ddpm", 4))
    with pytest.raises(ValueError, match="different from the first"):
        V.walk_frames(model, 3, 3, 6, config)


# --------------------------------------------------------------------------------------- SDEdit
def test_start_step_follows_the_strength():
    assert [E.start_step(10, s) for s in (0.0, 0.25, 0.5, 1.0)] == [10, 8, 5, 0]
    with pytest.raises(ValueError, match="strength must be from 0 to 1"):
        E.start_step(10, 1.5)


def test_sdedit_noises_to_the_start_level_then_runs_the_sampler():
    x0 = 0.3 * torch.ones(1, 3, 4, 4)
    eps = seed_noise([2], (3, 4, 4))
    config = SamplerConfig("ddim", 10)
    assert torch.equal(E.sdedit(GaussianDenoiser(), COSINE, x0, config, 0.0, eps), x0)
    # strength 1: the whole grid from x0 noised to its first level (Algorithm 1 with t0 = 1)
    from diffusion_core.schedules import time_grid

    abar = float(time_grid(COSINE, 10).alphas_cumprod[0])
    x_T = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    full = sample(sample_steps(GaussianDenoiser(), COSINE, x_T, config))
    torch.testing.assert_close(E.sdedit(GaussianDenoiser(), COSINE, x0, config, 1.0, eps), full, rtol=0, atol=1e-6)
    # a weak edit stays nearer the input than a strong one (Gaussian data, one point far from its mean)
    far = torch.full((1, 3, 8, 8), 2.5)
    e = seed_noise([5], (3, 8, 8))
    dist = [float((E.sdedit(GaussianDenoiser(), COSINE, far, config, s, e) - far).abs().mean())
            for s in (0.2, 0.6, 1.0)]
    assert dist[0] < dist[1] < dist[2]


def test_masked_regeneration_keeps_the_known_region_exactly():
    x0 = seed_noise([1], (3, 8, 8))
    eps = seed_noise([2], (3, 8, 8))
    regen = torch.zeros(1, 1, 8, 8)
    regen[..., 2:6, 2:6] = 1.0
    for name, eta in (("ddim", 0.0), ("ddpm", 0.0)):
        config = SamplerConfig(name, 6, eta)
        out = E.sdedit(GaussianDenoiser(), LINEAR, x0, config, 1.0, eps, NoiseSource([2]), regen, NoiseSource([9]))
        keep = regen == 0
        assert torch.equal(out.expand_as(x0)[keep.expand_as(x0)], x0[keep.expand_as(x0)])
        assert not torch.equal(out[..., 2:6, 2:6], x0[..., 2:6, 2:6])
        # regenerating everywhere is plain SDEdit (the per-step walk changes nothing for DDIM and DDPM)
        plain = E.sdedit(GaussianDenoiser(), LINEAR, x0, config, 1.0, eps, NoiseSource([2]))
        everywhere = E.sdedit(GaussianDenoiser(), LINEAR, x0, config, 1.0, eps, NoiseSource([2]),
                              torch.ones(1, 1, 8, 8), NoiseSource([9]))
        torch.testing.assert_close(everywhere, plain, rtol=0, atol=1e-6)


def test_edit_image_round_trips_at_strength_zero_and_is_deterministic(models):
    model = models["a"]
    image = random_images(1, 16, seed=4)[0]
    config = SamplerConfig("ddim", 8)
    np.testing.assert_array_equal(E.edit_image(model, image, config, 0.0, 1), image)
    a = E.edit_image(model, image, config, 0.5, 1)
    np.testing.assert_array_equal(a, E.edit_image(model, image, config, 0.5, 1))
    assert not np.array_equal(a, E.edit_image(model, image, config, 0.5, 2))
    mask = E.rectangle_mask(16, 0.25, 0.25, 0.75, 0.5)
    assert mask.sum() == 8 * 4 and mask[4:8, 4:12].all()
    masked = E.edit_image(model, image, SamplerConfig("ddpm", 8), 1.0, 1, mask)
    np.testing.assert_array_equal(masked[~mask], image[~mask])
    assert E.edit_evaluations(config, 0.5) == 4
    with pytest.raises(ValueError, match="16x16"):
        E.edit_image(model, random_images(1, 32)[0], config, 0.5, 1)
    with pytest.raises(ValueError, match="left < right"):
        E.rectangle_mask(16, 0.5, 0.0, 0.5, 1.0)


# -------------------------------------------------------------------------- trajectory geometry
def test_pca_of_a_known_low_rank_set():
    rng = np.random.default_rng(0)
    u, v = np.linalg.qr(rng.standard_normal((50, 2)))[0].T  # two orthonormal directions in 50-D
    a, b = 3.0 * rng.standard_normal(40), 1.0 * rng.standard_normal(40)  # variance 9 along u, 1 along v
    centre = rng.standard_normal(50)
    points = centre + a[:, None] * u + b[:, None] * v
    pca = A.fit_pca(points)
    assert pca.explained.sum() == pytest.approx(1.0)  # rank 2: two components hold all of it
    assert pca.explained[0] > pca.explained[1]
    assert abs(pca.components[0] @ u) == pytest.approx(1.0, abs=0.05)  # the first component is u (up to sign)
    coords = pca.project(points)
    rebuilt = pca.mean + coords @ pca.components
    np.testing.assert_allclose(rebuilt, points, atol=1e-9)  # nothing lost
    d = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(coords), d(points), atol=1e-9)  # distances kept
    flipped = A.fit_pca(points[::-1])
    np.testing.assert_allclose(flipped.components, pca.components, atol=1e-9)  # signs fixed, order free
    with pytest.raises(ValueError, match="at least two points"):
        A.fit_pca(points[:1])


def test_trajectory_geometry_has_one_point_per_step(models):
    geo = A.trajectory_geometry(models["a"], [0, 1, 2], SamplerConfig("ddim", 6))
    assert geo.x_t.shape == (3, 7, 2) and geo.pred_x0.shape == (3, 6, 2) and geo.x0_change.shape == (3, 5)
    assert geo.frames.shape == (3, 6, 16, 16, 3) and geo.x_t_frames.shape == (3, 7, 16, 16, 3)
    assert len(geo.times) == 6
    np.testing.assert_array_equal(geo.x_t_frames[:, -1], G.generate(models["a"], [0, 1, 2], SamplerConfig("ddim", 6)))
    states = list(G.step_states(models["a"], [1], SamplerConfig("ddim", 6), autocast=None))
    x0 = np.stack([s.pred_x0[0].double().flatten().numpy() for s in states])
    np.testing.assert_allclose(geo.x0_change[1], np.sqrt(((x0[1:] - x0[:-1]) ** 2).mean(1)), rtol=1e-5)
    np.testing.assert_array_equal(geo.frames[1, -1], models["a"].normalization.to_pixels(states[-1].pred_x0)[0])
    assert 0 < geo.explained_x_t.sum() <= 1 + 1e-9


# ------------------------------------------------------------------------------ inversion quality
def test_inversion_quality_rows_follow_the_round_trip(models):
    model = models["a"]
    images = random_images(2, 16, seed=1)
    rows, recons = A.inversion_quality(model, images, [4, 2], [0, 2])
    assert [(r.steps, r.refinement) for r in rows] == [(2, 0), (2, 2), (4, 0), (4, 2)]
    assert recons.shape == (4, 2, 16, 16, 3)
    _, recon = G.invert(model, images, 4, 0)
    np.testing.assert_array_equal(recons[2], recon)
    mse = ((recon / 255.0 - images / 255.0) ** 2).mean()
    assert mse > 0 and rows[2].mse == pytest.approx(mse) and rows[2].psnr == pytest.approx(10 * np.log10(1 / mse))
    assert rows[0].mse > rows[2].mse  # fewer, larger steps: a worse first-order round trip
    assert rows[1].mse < rows[0].mse and rows[3].mse < rows[2].mse  # the fixed-point refinement tightens it
    assert [r.evaluations for r in rows] == [4, 8, 8, 16]
    with pytest.raises(ValueError, match="at least one step count"):
        A.inversion_quality(model, images, [])


# ---------------------------------------------------------------- driven step by step, as in the app
def drive_cases(models) -> dict:
    """Each view's core call as a function of its drive: (call, image-steps it runs, images per step)."""
    a, ddim = models["a"], SamplerConfig("ddim", 4)
    image = random_images(1, 16, seed=5)[0]
    cells = V.grid_cells(V.Cell("a", "ddim", 3, 0.0, 0), V.Axis("checkpoint", ("a", "b")), V.Axis("seed", (0, 1)))
    branches = [V.Branch("ddim", 0.5, 1), V.Branch("dpmpp_2m")]
    region = E.rectangle_mask(16, 0.25, 0.25, 0.75, 0.5)

    def inversion(drive):  # the rows without their timings
        rows, recons = A.inversion_quality(a, random_images(2, 16, seed=6), [2, 3], [0, 1], drive)
        return [dataclasses.replace(r, seconds=0.0) for r in rows], recons

    return {
        "grid": (lambda d: V.grid_images(cells, models, None if d is None else {"a": d, "b": d}), 4 * 3, 2),
        "branch": (lambda d: V.branch(a, 5, SamplerConfig("ddpm", 6), 2, branches, d), 6 + 2 * 4, 1),
        "variations": (lambda d: V.variations(a, 3, [10, 11, 12], 0.3, ddim, d), 3 * 4, 3),
        "walk": (lambda d: V.walk_frames(a, 3, 9, 5, ddim, d), 5 * 4, 5),
        "sdedit": (lambda d: E.edit_image(a, image, SamplerConfig("ddpm", 8), 0.5, 1, drive=d), 4, 1),
        "inpainting": (lambda d: E.edit_image(a, image, ddim, 0.75, 1, region, d), 3, 1),
        "geometry": (lambda d: A.trajectory_geometry(a, [0, 1, 2], ddim, d), 3 * 4, 3),
        "inversion": (inversion, 2 * 2 * (2 + 2 + 3 + 3), 2),  # N x 2 x steps a row: inversion, then decoding
    }


def assert_identical(a, b) -> None:
    """Equal bit for bit: arrays, tensors and numbers, in lists, tuples and dataclasses."""
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_identical(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("case", ["grid", "branch", "variations", "walk", "sdedit", "inpainting", "geometry",
                                  "inversion"])
def test_a_driven_view_is_the_undriven_one_and_stops_at_a_step(models, case):
    call, total, per_step = drive_cases(models)[case]
    job = compute.Job(total)
    assert_identical(call(compute.driver("cpu", 1.0, job)), call(None))
    assert job.done == total  # every step went through the drive: the progress bar ends at 100%

    stop_at = 2 * per_step  # the visitor leaves after two steps
    job = compute.Job(total, alive=lambda: job.done < stop_at)
    with pytest.raises(compute.Stopped, match="the visitor left"):
        call(compute.driver("cpu", 1.0, job))
    assert job.done == stop_at
