"""Autoguidance (Karras et al. 2024): the combination against hand-computed numbers, every sampler
at w = 1 (the main model's samples, bit for bit) and w = 0 (the guide's), guides that do not fit
refused with the difference named, and the CLI's --guide/--guidance on tiny checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_core import diffusion as D
from diffusion_core import runtime
from diffusion_core.checkpoint import describe_model, load_checkpoint, read_description, save_checkpoint
from diffusion_core.cli import main
from diffusion_core.generate import generate, interpolation_frames
from diffusion_core.guidance import (Guidance, GuidedDenoiser, autoguidance, check_guide, description_mismatches,
                                     guidance)
from diffusion_core.images import make_grid
from diffusion_core.model import PixelNormalization
from diffusion_core.samplers import REGISTRY, SamplerConfig
from diffusion_core.unet import UNet
from tests.helpers import tiny_experiment
from tests.test_app import media, one_thread  # noqa: F401  (fixtures of the app tests)

NORM = PixelNormalization((0.45, 0.4, 0.35), (0.25, 0.25, 0.25))


def make_checkpoint(folder, name, widths=(8, 16), prediction="eps", image_size=16, schedule=None,
                    normalization=NORM, seed=0, epochs=None):
    """A randomly initialised tiny checkpoint (float32 weights); returns its .json path."""
    exp = tiny_experiment(name, image_size, widths=widths, prediction=prediction)
    if schedule is not None:
        exp = exp.with_overrides(schedule=schedule)
    torch.manual_seed(seed)
    net = UNet(exp.network)
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)
    training = {"images_seen": 0} if epochs is None else {"epochs_completed": epochs}
    desc = describe_model(exp, normalization, net, training=training)
    return save_checkpoint(folder / name, net.state_dict(), desc, dtype=torch.float32)[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A main model predicting eps and a guide of a quarter of its parameters predicting v."""
    folder = tmp_path_factory.mktemp("guidance")
    main_model = load_checkpoint(make_checkpoint(folder, "main", (8, 16), "eps", seed=0), "cpu")
    guide_model = load_checkpoint(make_checkpoint(folder, "guide", (4, 8), "v", seed=1, epochs=12.5), "cpu")
    return folder, main_model, guide_model


# ------------------------------------------------------------------------------------ the formula
def test_autoguidance_against_hand_computation():
    main_x0, guide_x0 = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, 1.0, 0.5])
    # D_w = D_0 + w (D_1 - D_0): at w = 3, 0.5 + 3 * 1.5 = 5.0; 1 + 3 * (-2) = -5.0; 0.5 + 0 = 0.5
    assert autoguidance(main_x0, guide_x0, 3.0).tolist() == [5.0, -5.0, 0.5]
    # w = 0.5 is the mean of the two; w = 1 and w = 0 return the model's own tensor
    assert autoguidance(main_x0, guide_x0, 0.5).tolist() == [1.25, 0.0, 0.5]
    assert autoguidance(main_x0, guide_x0, 1.0) is main_x0 and autoguidance(main_x0, guide_x0, 0.0) is guide_x0


class Constant:
    """A denoiser that predicts a fixed x0 and the eps consistent with it at x_t; counts calls."""

    def __init__(self, x0: float):
        self.x0, self.calls = x0, 0

    def __call__(self, x_t, signal, noise):
        self.calls += 1
        x0 = torch.full_like(x_t, self.x0)
        return D.eps_from_x0(x_t, x0, signal, noise), x0


def test_guided_denoiser_combines_x0_and_eps_consistently():
    """x0 and eps are affine in each other at a fixed x_t, so combining both with weights w and
    1 - w keeps x_t = alpha x0_w + sigma eps_w: the guided eps is the eps of the guided x0."""
    main_den, guide_den = Constant(2.0), Constant(0.5)
    den = GuidedDenoiser(main_den, guide_den, 3.0)
    x_t, signal, noise = torch.tensor([[[[1.0]]]]), 0.6, 0.8
    eps, x0 = den(x_t, signal, noise)
    assert x0.item() == pytest.approx(5.0)  # 0.5 + 3 (2 - 0.5)
    assert eps.item() == pytest.approx((1.0 - 0.6 * 5.0) / 0.8)  # eps of x0 = 5 at x_t = 1: -2.5
    assert (main_den.calls, guide_den.calls, den.calls) == (1, 1, 2)
    # w = 1 and w = 0 run one model only
    GuidedDenoiser(main_den, guide_den, 1.0)(x_t, signal, noise)
    GuidedDenoiser(main_den, guide_den, 0.0)(x_t, signal, noise)
    assert (main_den.calls, guide_den.calls) == (2, 2)


def test_mixed_prediction_types_are_combined_as_x0(models):
    """The guide predicts v, the main model eps: each is turned into (eps, x0) first; the guided
    pair is the hand combination of the two and stays on the line x_t = alpha x0 + sigma eps."""
    _, main_model, guide_model = models
    main_den, guide_den = runtime.denoiser(main_model, None), runtime.denoiser(guide_model, None)
    assert (main_den.prediction, guide_den.prediction) == ("eps", "v")
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    signal, noise = 0.6, 0.8
    eps, x0 = GuidedDenoiser(main_den, guide_den, 2.5)(x_t, signal, noise)
    eps_1, x0_1 = main_den(x_t, signal, noise)
    eps_0, x0_0 = guide_den(x_t, signal, noise)
    torch.testing.assert_close(x0, x0_0 + 2.5 * (x0_1 - x0_0), rtol=0, atol=1e-6)
    torch.testing.assert_close(eps, D.eps_from_x0(x_t, x0, signal, noise), rtol=0, atol=1e-5)
    assert (x0 - x0_1).abs().max() > 1e-3  # the guide changes something


# ------------------------------------------------------------------------ every sampler, w = 1 and 0
def _config(name: str) -> SamplerConfig:
    return SamplerConfig(name, 3, 0.5 if REGISTRY[name].uses_eta else 0.0)  # eta 0.5: a stochastic DDIM


@pytest.mark.parametrize("name", list(REGISTRY))
def test_w1_is_the_main_model_and_w0_the_guide(models, name):
    _, main_model, guide_model = models
    config, seeds = _config(name), [0, 5]
    alone = generate(main_model, seeds, config, autocast=None)
    guide_alone = generate(guide_model, seeds, config, autocast=None)
    at_1 = generate(main_model, seeds, config, autocast=None, guidance=guidance(main_model, guide_model, 1.0))
    at_0 = generate(main_model, seeds, config, autocast=None, guidance=guidance(main_model, guide_model, 0.0))
    at_2 = generate(main_model, seeds, config, autocast=None, guidance=guidance(main_model, guide_model, 2.0))
    assert np.array_equal(at_1, alone) and np.array_equal(at_0, guide_alone)
    assert not np.array_equal(at_2, alone) and not np.array_equal(at_2, guide_alone)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_guided_samples_follow_the_combined_prediction(models, name):
    """Sampling with a GuidedDenoiser at w = 2 is sampling with the hand-combined denoiser."""
    from diffusion_core.generate import step_states
    from diffusion_core.samplers import sample

    _, main_model, guide_model = models
    main_den, guide_den = runtime.denoiser(main_model, None), runtime.denoiser(guide_model, None)

    def by_hand(x_t, signal, noise):
        (eps_1, x0_1), (eps_0, x0_0) = main_den(x_t, signal, noise), guide_den(x_t, signal, noise)
        return eps_0 + 2 * (eps_1 - eps_0), x0_0 + 2 * (x0_1 - x0_0)

    config = _config(name)
    guided = sample(step_states(main_model, [3], config, guidance=guidance(main_model, guide_model, 2.0),
                                autocast=None))
    expected = sample(step_states(main_model, [3], config, denoiser=by_hand))
    torch.testing.assert_close(guided, expected, rtol=0, atol=1e-5)


def test_interpolation_at_w1_is_unguided(models):
    _, main_model, guide_model = models
    config = SamplerConfig("ddim", 3)
    plain = interpolation_frames(main_model, [1, 2], 3, "slerp", config, autocast=None)
    at_1 = interpolation_frames(main_model, [1, 2], 3, "slerp", config, autocast=None,
                                guidance=guidance(main_model, guide_model, 1.0))
    at_3 = interpolation_frames(main_model, [1, 2], 3, "slerp", config, autocast=None,
                                guidance=guidance(main_model, guide_model, 3.0))
    assert np.array_equal(plain, at_1) and not np.array_equal(plain, at_3)


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("change, named", [
    ({"image_size": 32}, "network image_size (16 against 32)"),
    ({"schedule": {"kind": "linear"}}, "schedule kind (continuous_cosine against linear)"),
    ({"schedule": {"min_signal_rate": 0.05}}, "schedule min_signal_rate (0.02 against 0.05)"),
    ({"normalization": PixelNormalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))},
     "pixel normalization mean ((0.450000, 0.400000, 0.350000) against (0.500000, 0.500000, 0.500000), up to "
     "1.5e-01 apart): not trained on the same images; pixel normalization std"),
])
def test_a_guide_that_does_not_fit_is_refused_with_the_difference_named(models, tmp_path, change, named):
    _, main_model, _ = models
    other = load_checkpoint(make_checkpoint(tmp_path, "other", (4, 8), **change), "cpu")
    with pytest.raises(ValueError, match="^other cannot guide main: they differ in ") as e:
        check_guide(main_model, other)
    assert named in str(e.value)
    with pytest.raises(ValueError, match="cannot guide"):
        guidance(main_model, other, 2.0)
    assert description_mismatches(main_model.description, other.description) != []


def test_schedule_fields_unused_by_the_kind_do_not_matter(models, tmp_path):
    """beta_end is no parameter of the continuous cosine schedule: such a guide fits."""
    _, main_model, _ = models
    other = load_checkpoint(make_checkpoint(tmp_path, "other", (4, 8), schedule={"beta_end": 0.03}), "cpu")
    check_guide(main_model, other)
    assert description_mismatches(main_model.description, other.description) == []


def test_weights_out_of_bounds_and_a_weight_without_guide_are_refused(models):
    _, main_model, guide_model = models
    for w in (-0.5, 10.5, math.nan):
        with pytest.raises(ValueError, match="guidance weight must be between 0 and 10 \\(1: no guidance\\)"):
            guidance(main_model, guide_model, w)
    with pytest.raises(ValueError, match="guidance weight 2 needs a guide model"):
        guidance(main_model, None, 2.0)
    assert guidance(main_model, None, 1.0) is None
    assert guidance(main_model, guide_model, 10.0) == Guidance(guide_model, 10.0)


# ------------------------------------------------------------------------------------------- CLI
def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_sample_round_trip(models, tmp_path, capsys):
    folder, main_model, guide_model = models
    m, g = str(folder / "main.json"), str(folder / "guide.json")
    common = ["--steps", "3", "--seeds", "0-3", "--device", "cpu", "--sampler", "ddpm"]
    assert main(["sample", m, *common, "--guide", g, "--guidance", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert "guided by guide at w = 2" in capsys.readouterr().out
    expected = generate(main_model, [0, 1, 2, 3], SamplerConfig("ddpm", 3), guidance=Guidance(guide_model, 2.0))
    assert np.array_equal(_png(tmp_path / "g.png"), make_grid(expected))
    assert main(["sample", m, *common, "--guide", g, "--guidance", "1", "--out", str(tmp_path / "one.png")]) == 0
    assert main(["sample", m, *common, "--out", str(tmp_path / "plain.png")]) == 0
    assert np.array_equal(_png(tmp_path / "one.png"), _png(tmp_path / "plain.png"))


def test_cli_refuses_with_one_line(models, tmp_path, capsys):
    folder, _, _ = models
    m = str(folder / "main.json")
    big = make_checkpoint(tmp_path, "big", image_size=32)
    common = ["--steps", "2", "--seeds", "0", "--device", "cpu", "--out", str(tmp_path / "x.png")]
    assert main(["sample", m, *common, "--guide", str(big), "--guidance", "2"]) == 2
    assert "error: big cannot guide main: they differ in network image_size (16 against 32)" in capsys.readouterr().err
    assert main(["sample", m, *common, "--guidance", "2"]) == 2
    assert "needs a guide model" in capsys.readouterr().err
    assert main(["interpolate", m, "--seeds", "1", "2", "--guide", str(folder / "guide.json"), "--guidance", "12",
                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "i.png")]) == 2
    assert "between 0 and 10" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "i.png").exists()


def test_cli_evaluate_runs_one_evaluation_per_weight(monkeypatch, capsys):
    from diffusion_core import evaluation

    seen = []
    monkeypatch.setattr(evaluation, "evaluate_checkpoint",
                        lambda o: seen.append(o) or {"fid": 10 - o.guidance, "guidance": o.guidance})
    assert main(["evaluate", "m.json", "--data", "imgs", "--guide", "g.json", "--guidance", "1", "1.5", "2"]) == 0
    assert [(o.guide, o.guidance) for o in seen] == [("g.json", 1.0), ("g.json", 1.5), ("g.json", 2.0)]
    assert capsys.readouterr().out.splitlines()[:3] == ["# guidance 1", "fid: 9.0", "guidance: 1.0"]
    seen.clear()
    assert main(["evaluate", "m.json", "--data", "imgs", "--guidance", "1", "2"]) == 2  # no guide
    assert main(["evaluate", "m.json", "--data", "imgs", "--guide", "g.json", "--guidance", "2", "-1"]) == 2
    assert seen == []  # refused before the first (long) evaluation


def test_evaluation_records_guide_and_weight(models, tmp_path):
    """evaluate_model names the guide (by its description, also from a run's model.json) and w in
    its result; evaluations that differ only in w, or only in the guide's age, are kept side by side;
    a guided result never becomes the model's headline metrics."""
    from diffusion_core.evaluation import evaluate_model, record_result

    folder, main_model, guide_model = models

    class Extractor:  # a fixed random projection of the pixels to 8 features: cheap, deterministic
        weights_id = "fake-projection"
        projection = np.random.default_rng(1).standard_normal((16 * 16 * 3, 8))

        def __call__(self, images):
            return (images.reshape(len(images), -1) / 255.0) @ self.projection

    real = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    config = SamplerConfig("ddim", 2)
    results = [evaluate_model(main_model, real, "noise", config, 6, Extractor(), tmp_path / "cache",
                              memorization=False, autocast=None, guidance=guidance(main_model, guide_model, w))
               for w in (1.5, 2.0)]
    assert [(r["guide"], r["guidance"]) for r in results] == [("guide", 1.5), ("guide", 2.0)]
    assert results[0]["guide_parameters"] == guide_model.description["parameters"] < main_model.description[
        "parameters"]
    assert results[0]["guide_epochs"] == 12.5
    assert results[0]["fid"] != results[1]["fid"]
    plain = evaluate_model(main_model, real, "noise", config, 6, Extractor(), tmp_path / "cache",
                           memorization=False, autocast=None)
    assert "guide" not in plain and "guidance" not in plain
    # the same guide saved as a training run saves it (runs/NAME/model.json) is still named "guide"
    run_guide = load_checkpoint(save_checkpoint(tmp_path / "run" / "model", guide_model.network.state_dict(),
                                                guide_model.description, dtype=torch.float32)[0], "cpu")
    assert run_guide.name == "model"
    from_run = evaluate_model(main_model, real, "noise", config, 6, Extractor(), tmp_path / "cache",
                              memorization=False, autocast=None, guidance=guidance(main_model, run_guide, 2.0))
    assert from_run["guide"] == "guide" and from_run["fid"] == results[1]["fid"]
    path = make_checkpoint(tmp_path, "record")
    record_result(path, plain, protocol=True)
    for r in results:
        record_result(path, r, protocol=True)
    younger = results[1] | {"guide_epochs": 5.0, "fid": 99.0}  # the same guide at another age: its own row
    record_result(path, younger, protocol=True)
    metrics = read_description(path)["metrics"]
    assert [(r.get("guidance"), r.get("guide_epochs")) for r in metrics["evaluations"]] == [
        (None, None), (1.5, 12.5), (2.0, 12.5), (2.0, 5.0)]
    assert metrics["fid"] == plain["fid"] and "guide" not in metrics and "guidance" not in metrics
    record_result(path, results[0] | {"fid": 1.0}, protocol=True)  # the same setting again replaces its row
    metrics = read_description(path)["metrics"]
    assert len(metrics["evaluations"]) == 4 and metrics["evaluations"][-1]["fid"] == 1.0
    assert metrics["fid"] == plain["fid"]


def test_the_shipped_guide_config_fits_ours2_eps():
    """experiments/ours2_eps_guide.toml: what fixes x_t as ours2_eps; smaller and trained for less."""
    from diffusion_core.config import load_experiment
    from diffusion_core.guidance import mismatches
    from diffusion_core.networks import build_network, count_parameters

    main_exp, guide_exp = (load_experiment(f"experiments/{n}.toml") for n in ("ours2_eps", "ours2_eps_guide"))
    assert mismatches(main_exp, NORM, guide_exp, NORM) == []
    assert (guide_exp.data, guide_exp.train.loss, guide_exp.train.prediction) == (
        main_exp.data, main_exp.train.loss, main_exp.train.prediction)
    ratio = count_parameters(build_network(guide_exp.network)) / count_parameters(build_network(main_exp.network))
    assert ratio < 1
    assert guide_exp.train.epochs < main_exp.train.epochs


# ------------------------------------------------------------------------------------------- app
def test_parse_weights():
    from explorer_ui.requests import parse_weights

    assert parse_weights("2") == (2.0,) and parse_weights(" 1, 1.5 2,1 ") == (1.0, 1.5, 2.0)
    for text, message in [("", "give a guidance weight"), ("1, x", "'x' is not a guidance weight"),
                          ("12", "between 0 and 10"), ("0 1 2 3 4 5 6 7 8", "at most 8 guidance weights")]:
        with pytest.raises(ValueError, match=message):
            parse_weights(text)


def test_sample_page_guides_with_a_fitting_checkpoint_and_a_row_per_weight(monkeypatch, tmp_path, media):
    from diffusion_core.guidance import Guidance
    from tests.helpers import make_tiny_checkpoint
    from tests.test_app import assert_shows, clean, open_app, pixels

    ck = tmp_path / "checkpoints"
    make_tiny_checkpoint(ck, "tiny_a", seed=0, metrics={"fid": 100.0})  # the page opens on the best FID
    make_tiny_checkpoint(ck, "tiny_b", seed=1)
    make_tiny_checkpoint(ck, "big", image_size=32, seed=2)
    at = open_app(monkeypatch, ck, "sample")
    clean(at)
    main_model, guide_model = load_checkpoint(ck / "tiny_a.json"), load_checkpoint(ck / "tiny_b.json")
    config, seeds = SamplerConfig("ddim", 20), [0, 1, 2, 3]
    assert at.selectbox(key="sample_guide").options == ["(none)", "tiny_b"]  # big has another resolution
    assert_shows(pixels(media, at.image[0]), make_grid(generate(main_model, seeds, config), cols=4))

    at.selectbox(key="sample_guide").set_value("tiny_b").run()  # default weight 1.5
    clean(at)
    guided = generate(main_model, seeds, config, guidance=Guidance(guide_model, 1.5))
    assert_shows(pixels(media, at.image[0]), make_grid(guided, cols=4))
    assert any("guided by tiny_b at w = 1.5;" in c.value for c in at.caption)

    at.text_input(key="sample_guidance").set_value("1, 3").run()  # a row per weight, w = 1 the model alone
    clean(at)
    rows = [generate(main_model, seeds, config), generate(main_model, seeds, config,
                                                          guidance=Guidance(guide_model, 3.0))]
    assert_shows(pixels(media, at.image[0]), make_grid(np.concatenate(rows), cols=4))
    assert any("guided by tiny_b at w = 1, 3 (a row each)" in c.value for c in at.caption)

    # the budget counts what each row runs: the w = 3 row's guide calls too, even after a w = 1 row
    from explorer_ui import compute, plans
    g_main, g_guide = (plans.gflops_per_image(m.experiment.network) for m in (main_model, guide_model))
    needed = 2 * 4 * 20 * g_main + 4 * 20 * g_guide
    monkeypatch.setenv(compute.MAX_GFLOP_ENV, str(needed - 4 * 20 * g_guide / 2))
    at.text_input(key="sample_guidance").set_value("1, 3.0").run()  # a new request, not the cached one
    assert at.error and "this request needs about" in at.error[0].value and len(at.image) == 0
    monkeypatch.setenv(compute.MAX_GFLOP_ENV, str(needed * 1.01))
    at.run()
    assert not at.error and len(at.image) == 1

    at.text_input(key="sample_guidance").set_value("1, x").run()
    assert not at.exception and len(at.image) == 0
    assert at.error[0].value == "Autoguidance: 'x' is not a guidance weight (a number from 0 to 10)"


def test_every_schedule_kind_is_compared_by_the_fields_that_give_its_rates():
    """Diffusers schedules (scaled_linear, trained_betas) too: a KeyError here once broke the
    Sample page's list of guides for them. Equal rate fields: no mismatch; another beta table: named."""
    from typing import get_args

    from diffusion_core.guidance import mismatches
    from diffusion_core.schedules import RATE_FIELDS, ScheduleConfig, ScheduleKind

    assert set(RATE_FIELDS) == set(get_args(ScheduleKind))
    norm = PixelNormalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    for schedule in (ScheduleConfig(kind="scaled_linear", beta_start=0.00085, beta_end=0.012, num_timesteps=10),
                     ScheduleConfig(kind="trained_betas", num_timesteps=3, trained_betas=(0.1, 0.2, 0.3))):
        exp = tiny_experiment().with_overrides(schedule=schedule.__dict__)
        assert mismatches(exp, norm, exp, norm) == []
    other = tiny_experiment().with_overrides(schedule={"kind": "trained_betas", "num_timesteps": 3,
                                                       "trained_betas": (0.1, 0.2, 0.4)})
    assert mismatches(exp, norm, other, norm) == [
        "schedule trained_betas ((0.1, 0.2, 0.3) against (0.1, 0.2, 0.4))"]
