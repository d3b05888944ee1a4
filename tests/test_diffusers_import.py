"""diffusers pipeline folders: found in every layout, validated as untrusted, and sampled by the
core exactly as diffusers' own pipelines and schedulers sample them (tiny random UNet2DModels saved
with save_pretrained into a temporary folder; nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusion_core import diffusion as D  # noqa: E402
from diffusion_core.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from diffusion_core.cli import main  # noqa: E402
from diffusion_core.diffusers_import import find_pipeline  # noqa: E402
from diffusion_core.runtime import denoiser  # noqa: E402
from diffusion_core.samplers import NoiseSource, SamplerConfig, sample, sample_steps  # noqa: E402
from diffusion_core.schedules import ScheduleConfig, discrete_alphas_cumprod, time_grid  # noqa: E402

diffusers.utils.logging.disable_progress_bar()
SIZE = 16


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=SIZE, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def save_pipeline(unet, folder: Path, scheduler, pipeline=None) -> Path:
    pipeline = pipeline or diffusers.DDIMPipeline
    pipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def our_x0(model, x_T, steps, clip, name="ddim", noise=None):
    return sample(sample_steps(denoiser(model), model.experiment.schedule, x_T, SamplerConfig(name, steps, 0.0, clip),
                               noise))


FAST = [("leading", 1, "epsilon", 10), ("trailing", 0, "v_prediction", 10), ("leading", 0, "sample", 10),
        ("linspace", 0, "epsilon", 10), ("trailing", 0, "epsilon", 7)]  # 7 steps: T // S is not T / S
EVERY = [(sp, off, pred, steps) for sp, off in (("leading", 1), ("leading", 0), ("trailing", 0), ("linspace", 0))
         for pred in ("epsilon", "v_prediction", "sample") for steps in (10, 50)]


@pytest.mark.parametrize("spacing,offset,prediction,steps", FAST + [
    pytest.param(*case, marks=pytest.mark.slow) for case in EVERY if case not in FAST])
def test_ddim_equals_ddim_pipeline(unet, tmp_path, spacing, offset, prediction, steps):
    """Deterministic DDIM from the same starting noise: our images are DDIMPipeline's to float32
    rounding, with and without clip_sample (the core's --clip re-derives eps from the clipped x0:
    the pipeline's use_clipped_model_output). At linspace too, where DDIMScheduler's steps land
    T // S below each grid step rather than on the next one. Every spacing, prediction and 10 or 50
    steps in the slow tier."""
    for clip in (False, True):
        folder = save_pipeline(unet, tmp_path / f"p{clip}", diffusers.DDIMScheduler(
            timestep_spacing=spacing, steps_offset=offset, clip_sample=clip, prediction_type=prediction))
        pipe = diffusers.DDIMPipeline.from_pretrained(folder)
        model = load_checkpoint(folder)
        x_T = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(3))
        theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=steps,
                      output_type="np", use_clipped_model_output=clip).images  # [N x H x W x 3] in [0, 1]
        ours = (our_x0(model, x_T, steps, clip) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - theirs).max() <= 1e-4, clip
        assert 0.05 < theirs.std()  # an image, not a constant


def pipeline_vs_ours(unet, folder: Path, steps: int, clip: bool, seed: int = 3):
    """(DDIMPipeline's images, ours) [N x H x W x 3] in [0, 1] from the same starting noise."""
    pipe = diffusers.DDIMPipeline.from_pretrained(folder)
    x_T = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                  output_type="np", use_clipped_model_output=clip).images
    ours = (our_x0(load_checkpoint(folder), x_T, steps, clip) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return theirs, ours


def test_trained_betas_are_the_schedule(unet, tmp_path):
    """A scheduler config with trained_betas: the core's abar table is diffusers' for those betas,
    the UNet sees the same integer steps, and DDIM equals DDIMPipeline on it."""
    betas = (np.linspace(0.02**0.5, 0.2**0.5, 1000) ** 2 / 10).tolist()  # neither linear nor scaled_linear
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDIMScheduler(trained_betas=betas, clip_sample=False,
                                                                         timestep_spacing="trailing"))
    model = load_checkpoint(folder)
    schedule = model.experiment.schedule
    assert (schedule.kind, len(schedule.trained_betas)) == ("trained_betas", 1000)
    theirs_abar = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.double().numpy()
    np.testing.assert_allclose(discrete_alphas_cumprod(schedule), theirs_abar, rtol=1e-5)
    assert abs(discrete_alphas_cumprod(schedule)[999] - 7.4702308e-05) < 1e-12  # prod(1 - beta_t) by a plain loop
    theirs, ours = pipeline_vs_ours(unet, folder, 10, False)
    assert np.abs(ours - theirs).max() <= 1e-4 and 0.05 < theirs.std()
    reloaded = load_checkpoint(folder)  # the description's JSON round trip keeps the betas
    assert reloaded.experiment.schedule == schedule


def test_set_alpha_to_one_false_ends_ddim_at_abar_0(unet, tmp_path):
    """set_alpha_to_one = false: DDIM's last step goes to abar_0 rather than clean, as DDIMScheduler's;
    the grid's last DDIM target says so, and the images equal DDIMPipeline's."""
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDIMScheduler(set_alpha_to_one=False, clip_sample=False,
                                                                         timestep_spacing="trailing"))
    schedule = load_checkpoint(folder).experiment.schedule
    grid = time_grid(schedule, 10)
    assert grid.ddim_targets[-1] == discrete_alphas_cumprod(schedule)[0] == pytest.approx(0.9999)  # 1 - beta_0
    assert grid.alphas_cumprod[-1] == 1.0  # DDPM's last step still goes to clean, as DDPMScheduler's
    theirs, ours = pipeline_vs_ours(unet, folder, 10, False)
    assert np.abs(ours - theirs).max() <= 1e-4
    set_to_one = save_pipeline(unet, tmp_path / "one", diffusers.DDIMScheduler(clip_sample=False,
                                                                               timestep_spacing="trailing"))
    assert np.abs(pipeline_vs_ours(unet, set_to_one, 10, False)[1] - ours).max() > 1e-3  # the setting matters


def test_ddim_targets_follow_diffusers_prev_timestep():
    """A diffusers schedule's DDIM steps land on t - T // S (golden levels), the next grid step only
    where the grid is evenly spaced; our own schedules step to the next grid level."""
    table = discrete_alphas_cumprod(ScheduleConfig("linear"))
    linspace = time_grid(ScheduleConfig("linear", spacing="linspace", ddim_target="stride"), 10)
    assert linspace.times.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    np.testing.assert_array_equal(linspace.ddim_targets, np.append(table[[899, 788, 677, 566, 455, 344, 233, 122, 11]],
                                                                   1.0))
    trailing = time_grid(ScheduleConfig("linear", ddim_target="stride"), 7)  # 7 does not divide 1000
    assert trailing.times.tolist() == [999, 856, 713, 570, 428, 285, 142]  # the last step lands on t = 0, not clean
    np.testing.assert_array_equal(trailing.ddim_targets, table[[857, 714, 571, 428, 286, 143, 0]])
    ours = time_grid(ScheduleConfig("linear", spacing="linspace"), 10)
    np.testing.assert_array_equal(ours.ddim_targets, ours.alphas_cumprod[1:])
    leading = time_grid(ScheduleConfig("linear", spacing="leading", steps_offset=1, ddim_target="stride"), 10)
    np.testing.assert_array_equal(leading.ddim_targets, leading.alphas_cumprod[1:])  # evenly spaced: the same
    np.testing.assert_array_equal(linspace.steps(8).ddim_targets, linspace.ddim_targets[8:])


def test_new_schedule_fields_are_checked_by_name():
    from diffusion_core.config import ConfigError, ExperimentConfig

    with pytest.raises(ValueError, match="trained_betas apply to the trained_betas kind only, got kind 'linear'"):
        ScheduleConfig("linear", trained_betas=(0.01,) * 1000)
    with pytest.raises(ValueError, match="ddim_target and set_alpha_to_one apply to discrete schedules only"):
        ScheduleConfig(set_alpha_to_one=False)
    with pytest.raises(ValueError, match="ddim_target must be next or stride"):
        ScheduleConfig("linear", ddim_target="previous")
    table = {"kind": "trained_betas", "num_timesteps": 3, "trained_betas": [0.1, 0.2, "0.3"]}
    with pytest.raises(ConfigError, match=r"\[schedule\] trained_betas\[2\] must be a finite number"):
        ExperimentConfig.from_dict({"name": "x", "schedule": table})
    table["trained_betas"][2] = 0.3
    schedule = ExperimentConfig.from_dict({"name": "x", "schedule": table}).schedule
    assert schedule.trained_betas == (0.1, 0.2, 0.3) and hash(schedule)  # a tuple: configs stay hashable
    np.testing.assert_allclose(discrete_alphas_cumprod(schedule), [0.9, 0.72, 0.504])  # prod(1 - beta)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_ddim_inversion_undoes_stride_steps(spacing):
    """DDIM inversion on a stride schedule undoes its sampling: for data N(0, s^2 I) the denoiser is
    exact (E[x0 | x_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) x_t), so with enough fixed-point
    iterations the round trip returns the starting noise to float64 rounding; inverting as if each
    step went to the next grid level does not."""
    import dataclasses

    from diffusion_core.samplers import ddim_invert

    def gaussian(x, signal, noise):  # s^2 = 0.25
        x0 = signal * 0.25 / (signal**2 * 0.25 + noise**2) * x
        return (x - signal * x0) / noise, x0

    schedule = ScheduleConfig("linear", spacing=spacing, ddim_target="stride", set_alpha_to_one=False)
    x_T = torch.randn((1, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = sample(sample_steps(gaussian, schedule, x_T, SamplerConfig("ddim", 7)))
    assert (ddim_invert(gaussian, schedule, x0, 7, fixed_point_iterations=100) - x_T).abs().max() < 1e-12
    as_next = dataclasses.replace(schedule, ddim_target="next")
    assert (ddim_invert(gaussian, as_next, x0, 7, fixed_point_iterations=100) - x_T).abs().max() > 1e-2


def test_ddim_equals_scheduler_before_clamping(unet, tmp_path):
    """On [-1, 1] itself (no pipeline clamp): the core's DDIM with --clip against DDIMScheduler.step."""
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDIMScheduler(clip_sample=True, timestep_spacing="trailing"))
    model = load_checkpoint(folder)
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(10)
    x = x_T = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    assert (our_x0(model, x_T, 10, True) - x).abs().max() <= 1e-4


@pytest.mark.parametrize("spacing,prediction", [("leading", "epsilon"), ("linspace", "v_prediction"),
                                                ("leading", "sample")])
def test_ddpm_chain_equals_ddpm_scheduler(unet, tmp_path, prediction, spacing):
    """Our ancestral DDPM (10 respaced steps) equals DDPMScheduler.step driven with the same noise:
    one image, whose step noise the scheduler draws from the generator our NoiseSource uses."""
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(
        prediction_type=prediction, timestep_spacing=spacing, clip_sample=True), diffusers.DDPMPipeline)
    model = load_checkpoint(folder)
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(10)
    seed = 11
    x = x_T = torch.randn((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed + 0x5EED)  # NoiseSource's generator of this seed
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample
    ours = our_x0(model, x_T, 10, True, "ddpm", NoiseSource([seed]))
    # float32 rounding, which predicting x0 ("sample") amplifies by sigma/alpha (~160 at t = 999)
    assert (ours - x).abs().max() <= 2e-4


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_one_ddpm_step_equals_ddpm_scheduler_step(unet, tmp_path, variance_type):
    """A single full-grid step (t = 500 -> 499), given identical inputs and noise; fixed_large
    (variance beta_t, the model description's ddpm_variance "beta") as well as fixed_small."""
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(clip_sample=False, variance_type=variance_type),
                           diffusers.DDPMPipeline)
    model = load_checkpoint(folder)
    kind = model.description["diffusers"]["ddpm_variance"]
    assert kind == {"fixed_small": "posterior", "fixed_large": "beta"}[variance_type]
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    x = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    z = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = scheduler.step(unet(x, 500).sample, 500, x, generator=torch.Generator().manual_seed(2)).prev_sample
    abar = discrete_alphas_cumprod(model.experiment.schedule)
    eps, x0 = denoiser(model)(x, float(np.sqrt(abar[500])), float(np.sqrt(1 - abar[500])))
    ours = D.ddpm_step(x, x0, float(abar[500]), float(abar[499]), z, kind)
    assert (ours - theirs).abs().max() <= 1e-4
    mean = D.ddpm_step(x, x0, float(abar[500]), float(abar[499]), torch.zeros_like(z), kind)
    # the noise's scale: beta_500 = 1e-4 + 500/999 (0.02 - 1e-4) = 0.01005996 (linear); beta_tilde a little less
    expected = 0.01005996 if kind == "beta" else 0.01005996 * (1 - abar[499]) / (1 - abar[500])
    assert ((ours - mean).std() / z.std()).item() ** 2 == pytest.approx(expected, rel=2e-3)


def test_fixed_large_reaches_the_cli_the_app_and_a_conversion(unet, tmp_path):
    """A fixed_large folder's DDPM runs with ddpm_variance "beta" from the CLI and the app's sampler
    box, and keeps it through `convert`; other samplers and our checkpoints are untouched."""
    import argparse

    from diffusion_core.commands import _sampler
    from diffusion_core.diffusers_import import ddpm_variance
    from explorer_ui.widgets import SamplerInputs

    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(variance_type="fixed_large"),
                           diffusers.DDPMPipeline)
    model = load_checkpoint(folder)
    args = argparse.Namespace(sampler="ddpm", steps=10, eta=0.0, clip=False)
    assert _sampler(args, model).ddpm_variance == "beta"
    args.sampler = "ddim"
    assert _sampler(args, model).ddpm_variance == "posterior"
    assert SamplerInputs("ddpm", 10, 0.0, False, "beta").config().ddpm_variance == "beta"
    assert SamplerInputs("ddim", 10, 0.0, False, "beta").config().ddpm_variance == "posterior"
    assert main(["convert", str(folder), str(tmp_path / "conv")]) == 0
    assert ddpm_variance(load_checkpoint(tmp_path / "conv.json").description) == "beta"
    assert ddpm_variance({"name": "ours"}) == "posterior"
    with pytest.raises(ValueError, match="ddpm_variance 'beta' applies to the ddpm sampler only, not ddim"):
        SamplerConfig("ddim", 10, ddpm_variance="beta")


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_fixed_large_ddpm_chain_equals_ddpm_scheduler(unet, tmp_path, spacing):
    """Our ancestral DDPM with ddpm_variance "beta" equals a chain of DDPMScheduler.step with
    variance_type fixed_large, on grids that end at t = 0 (where diffusers adds no noise to the last step)."""
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(
        variance_type="fixed_large", timestep_spacing=spacing, clip_sample=True), diffusers.DDPMPipeline)
    model = load_checkpoint(folder)
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[-1] == 0
    x = x_T = torch.randn((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(7 + 0x5EED)  # NoiseSource's generator of seed 7
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample
    config = SamplerConfig("ddpm", 10, clip_denoised=True, ddpm_variance="beta")
    ours = sample(sample_steps(denoiser(model), model.experiment.schedule, x_T, config, NoiseSource([7])))
    assert (ours - x).abs().max() <= 2e-4
    small = our_x0(model, x_T, 10, True, "ddpm", NoiseSource([7]))
    assert (small - x).abs().max() > 1e-2  # the posterior variance gives another chain


def test_spacings_match_diffusers_timesteps():
    with pytest.raises(ValueError, match="number of sampling steps must be an integer from 1 to 999"):
        time_grid(ScheduleConfig("linear", spacing="leading", steps_offset=1), 1000)  # its last step: t = 1000
    for spacing, offset in (("leading", 1), ("leading", 0), ("trailing", 0), ("linspace", 0)):
        scheduler = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
        for steps in (1, 7, 10, 50, 999 if offset else 1000):
            scheduler.set_timesteps(steps)
            grid = time_grid(ScheduleConfig("linear", spacing=spacing, steps_offset=offset), steps)
            assert grid.times.tolist() == scheduler.timesteps.tolist(), (spacing, steps)


@pytest.mark.parametrize("name,kind", [("scaled_linear", "scaled_linear"), ("squaredcos_cap_v2", "cosine")])
def test_beta_schedules_match_diffusers(name, kind):
    ours = discrete_alphas_cumprod(ScheduleConfig(kind, beta_start=0.00085, beta_end=0.012) if kind != "cosine"
                                   else ScheduleConfig(kind))
    theirs = diffusers.DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012).alphas_cumprod
    np.testing.assert_allclose(ours, theirs.double().numpy(), rtol=2e-5, atol=1e-7)


def test_hub_cache_snapshot_and_bare_unet_are_found(unet, tmp_path):
    pipe = save_pipeline(unet, tmp_path / "plain", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    entry = tmp_path / "hub" / "models--google--ddpm-tiny"
    snapshot = entry / "snapshots" / "0123abcd"
    shutil.copytree(pipe, snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0123abcd")
    for named in (entry, snapshot):
        found = find_pipeline(named)
        assert (found.root, found.name) == (snapshot, "google/ddpm-tiny")
    model = load_checkpoint(entry)
    assert (model.name, model.image_shape) == ("google/ddpm-tiny", (3, SIZE, SIZE))
    assert model.description["source"] == "diffusers"
    bare = find_pipeline(pipe / "unet")  # a bare UNet2DModel folder: the scheduler config beside it
    assert bare.unet == pipe / "unet" and bare.scheduler == pipe / "scheduler" / "scheduler_config.json"
    assert find_pipeline(tmp_path) is None


def test_converted_checkpoint_samples_like_the_folder(unet, tmp_path):
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDIMScheduler(timestep_spacing="trailing"))
    assert main(["convert", str(folder), str(tmp_path / "conv")]) == 0
    desc = json.loads((tmp_path / "conv.json").read_text())
    assert desc["experiment"]["network"]["kind"] == "diffusers_unet2d" and desc["weights_dtype"] == "float16"
    x_T = torch.randn((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    a = our_x0(load_checkpoint(folder), x_T, 10, True)
    b = our_x0(load_checkpoint(tmp_path / "conv.json"), x_T, 10, True)
    assert (a - b).abs().max() < 0.05  # fp16 weights
    assert main(["sample", str(folder), "--seeds", "0-1", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 100


def edit_json(path: Path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("file,changes,message", [
    ("unet/config.json", {"_class_name": "UNet2DConditionModel"}, "'UNet2DConditionModel' is not supported"),
    ("unet/config.json", {"sample_size": 100000}, "sample_size must be an integer from 1 to 1024"),
    ("unet/config.json", {"sample_size": [16, 32]}, r"sample_size \[16, 32\] is not square"),
    ("unet/config.json", {"num_class_embeds": 10}, "num_class_embeds 10 cannot be honoured"),
    ("unet/config.json", {"block_out_channels": [32, 10**9]}, "block_out_channels must be"),
    ("unet/config.json", {"out_channels": 6}, "out_channels must be an integer from 3 to 3"),
    ("model_index.json", {"_class_name": "LDMPipeline"}, "_class_name 'LDMPipeline' is not supported"),
    ("scheduler/scheduler_config.json", {"_class_name": "PNDMScheduler"}, "'PNDMScheduler' is not supported"),
    ("scheduler/scheduler_config.json", {"thresholding": True}, "thresholding True cannot be honoured"),
    ("scheduler/scheduler_config.json", {"trained_betas": [0.1] * 999}, r"trained_betas must hold num_timesteps "
                                                                           r"\(1000\) values, at most 100000, got 999"),
    ("scheduler/scheduler_config.json", {"trained_betas": [0.1] * 999 + [1.0]}, "trained_betas must be finite numbers "
                                                                              "strictly between 0 and 1"),
    ("scheduler/scheduler_config.json", {"trained_betas": [float("nan")] * 1000}, "trained_betas must be finite"),
    ("scheduler/scheduler_config.json", {"trained_betas": ["0.1"] * 1000}, "trained_betas must be finite"),
    ("scheduler/scheduler_config.json", {"trained_betas": 0.1}, "trained_betas must be a list of numbers, got 0.1"),
    ("scheduler/scheduler_config.json", {"trained_betas": [0.9] * 1000}, "trained_betas leave no signal"),
    ("scheduler/scheduler_config.json", {"variance_type": "learned_range"}, "variance_type 'learned_range'"),
    ("scheduler/scheduler_config.json", {"variance_type": "fixed_large_log"}, "variance_type 'fixed_large_log'"),
    ("scheduler/scheduler_config.json", {"set_alpha_to_one": "no"}, "set_alpha_to_one 'no' cannot be honoured"),
    ("scheduler/scheduler_config.json", {"prediction_type": "flow"}, "prediction_type 'flow' cannot be honoured"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": -5}, "num_train_timesteps must be an integer"),
    ("scheduler/scheduler_config.json", {"beta_start": 0.5, "beta_end": 0.1}, "beta_start < beta_end"),
])
def test_unsupported_configs_are_refused_naming_the_field(unet, tmp_path, file, changes, message):
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    edit_json(folder / file, **changes)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(folder)
    assert str(folder / file) in str(e.value) or file == "unet/config.json"


def test_a_config_with_an_integer_python_cannot_parse_is_refused_by_name(unet, tmp_path):
    """Integers of over 4,300 digits raise a plain ValueError in json: refused like bad JSON (the
    app's catalog catches the import's own error only)."""
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(path.read_text().replace('"num_train_timesteps": 1000', '"num_train_timesteps": ' + "9" * 5000))
    with pytest.raises(CheckpointError, match=r"scheduler_config.json is not valid JSON: Exceeds the limit"):
        load_checkpoint(folder)


def test_missing_or_mismatched_weights_are_refused(unet, tmp_path):
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    edit_json(folder / "unet" / "config.json", block_out_channels=[32, 48])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors: .*shape"):
        load_checkpoint(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"unet: no weight file \(diffusion_pytorch_model.safetensors"):
        load_checkpoint(folder)


def test_without_diffusers_a_folder_is_refused_in_one_line(unet, tmp_path, monkeypatch):
    """diffusers is imported only when a folder is opened; missing, it is one line naming the folder
    and the install command, and the rest of the core still imports."""
    import sys

    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    assert str(e.value) == (f"{folder}: diffusers models need the diffusers package: pip install 'diffusers>=0.30'")


class Payload:
    """Unpickling this would call Path.touch on the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_bin_never_runs(unet, tmp_path):
    folder = save_pipeline(unet, tmp_path / "p", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    weights.unlink()
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    model = load_checkpoint(folder)  # a plain tensor pickle loads through the restricted loader
    assert model.description["diffusers"]["weights_file"] == "diffusion_pytorch_model.bin"
    assert "weights from a .bin pickle, read by PyTorch's restricted loader" in model.experiment.description
    marker = tmp_path / "pwned"
    torch.save({**state, "x": Payload(marker)}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused by the restricted loader"):
        load_checkpoint(folder)
    assert not marker.exists()
    torch.load(folder / "unet" / "diffusion_pytorch_model.bin", weights_only=False)  # the control: an
    assert marker.exists()  # ordinary unpickling runs the payload


def test_the_app_catalog_lists_diffusers_folders(unet, tmp_path):
    from explorer_ui import catalog

    root = tmp_path / "checkpoints"
    pipe = save_pipeline(unet, root / "ddpm-tiny", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    hub = root / "models--org--ddim-tiny" / "snapshots" / "abc123"
    save_pipeline(unet, hub, diffusers.DDIMScheduler())
    broken = save_pipeline(unet, root / "broken", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    edit_json(broken / "unet" / "config.json", block_out_channels=[32, 48])
    entries = {e.label: e for e in catalog.scan(root)}
    assert set(entries) == {"ddpm-tiny (diffusers)", "org/ddim-tiny (diffusers)", "broken (diffusers)"}
    assert entries["ddpm-tiny (diffusers)"].usable and entries["org/ddim-tiny (diffusers)"].usable
    assert "tensor unet.up_blocks" not in entries["broken (diffusers)"].error
    assert "broken/unet/diffusion_pytorch_model.safetensors: tensor" in entries["broken (diffusers)"].error
    row = catalog.table_row(entries["org/ddim-tiny (diffusers)"])
    assert (row["image size"], row["parameters"], row["about"]) == (
        SIZE, sum(p.numel() for p in unet.parameters()), "diffusers DDIMPipeline (DDIMScheduler)")
    entry = entries["ddpm-tiny (diffusers)"]
    files = catalog.checkpoint_files(entry.path, entry.description)
    assert pipe / "unet" / "diffusion_pytorch_model.safetensors" in files and all(f.is_file() for f in files)
    only = catalog.scan(pipe)  # the sidebar naming the pipeline folder itself
    assert [(e.label, e.usable) for e in only] == [("ddpm-tiny (diffusers)", True)]


@pytest.mark.parametrize("page", ["home", "experiments", "sample", "trajectory", "interpolation", "compare", "live"])
def test_every_app_page_runs_on_a_diffusers_folder(unet, tmp_path, monkeypatch, page):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from explorer_ui import catalog, compute

    monkeypatch.setattr(catalog, "RESULTS_FOLDER", tmp_path / "no-results")
    monkeypatch.setattr(compute, "_threads", 1)
    folder = save_pipeline(unet, tmp_path / "ddpm-tiny", diffusers.DDPMScheduler(), diffusers.DDPMPipeline)
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == ("diffusion-explorer" if page == "home" else page.capitalize())
    if page == "experiments":
        assert "ddpm-tiny (diffusers)" in at.dataframe[0].value["name"].tolist()
    elif page != "home":  # home shows the grid of the best measured model: none here
        assert len(at.image) >= 1
