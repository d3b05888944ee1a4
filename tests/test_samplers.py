"""Samplers against an analytic denoiser: for Gaussian data x0 ~ N(mu, s^2) the optimal noise
prediction is known in closed form, so a correct sampler must return samples with the data's
mean and variance. Then golden values per sampler, and the registry that the CLI and the app read."""

import math

import pytest
import torch

from diffusion_core import samplers
from diffusion_core.samplers import (REGISTRY, NoiseSource, SamplerConfig, StepState, ddim_invert, sample,
                                     sample_steps, seed_noise)
from diffusion_core.schedules import ScheduleConfig, time_grid

MU, S = 0.3, 0.8


class GaussianDenoiser:
    """E[eps | x_t] and E[x0 | x_t] for x0 ~ N(MU, S^2) per dimension."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x_t, signal, noise):
        self.calls += 1
        var_t = signal**2 * S**2 + noise**2
        x0 = MU + signal * S**2 * (x_t - signal * MU) / var_t
        eps = noise * (x_t - signal * MU) / var_t
        return eps, x0


SCHEDULES = [ScheduleConfig(kind="linear"), ScheduleConfig(kind="cosine"), ScheduleConfig(kind="continuous_cosine")]


def _draw(schedule, config, n=2000, seed=0):
    """Samples and the std they must have. Every sampler's last step returns the posterior mean
    E[x0 | x_L] at the last grid level L, whose std for Gaussian data is a_L S^2 / sqrt(var_L)
    with var_L = a_L^2 S^2 + sigma_L^2 (slightly below S; well below it for the continuous
    schedule, whose cleanest level still has sigma = 0.31)."""
    seeds = list(range(seed, seed + n))
    x_T = seed_noise(seeds, (1, 2, 2)).double()
    out = sample(sample_steps(GaussianDenoiser(), schedule, x_T, config, NoiseSource(seeds)))
    abar_last = time_grid(schedule, config.num_steps).alphas_cumprod[-2]
    a, sigma2 = math.sqrt(abar_last), 1 - abar_last
    return out.flatten().numpy(), a * S**2 / math.sqrt(a**2 * S**2 + sigma2)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
@pytest.mark.parametrize("config", [SamplerConfig("ddim", 50, 0.0), SamplerConfig("ddim", 50, 1.0),
                                    SamplerConfig("ddpm", 100), SamplerConfig("dpmpp_2m", 20)],
                         ids=["ddim-eta0", "ddim-eta1", "ddpm-100", "dpmpp2m-20"])
def test_samplers_reproduce_gaussian_data_statistics(schedule, config):
    x, expected_std = _draw(schedule, config)  # 8000 values
    assert x.mean() == pytest.approx(MU, abs=0.04)
    # few-step samplers lose a little variance (discretisation; stochastic ones more, as the DDIM
    # paper's eta = 1 FIDs at S = 50 show): allow 10% here, and see the convergence test below
    assert x.std() == pytest.approx(expected_std, rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize("config", [SamplerConfig("ddim", 500, 0.0), SamplerConfig("ddim", 1000, 1.0)],
                         ids=["ddim-500", "ddim-eta1-1000"])
def test_samplers_converge_with_steps(config):
    x, expected_std = _draw(ScheduleConfig(kind="linear"), config, n=1000)
    assert x.mean() == pytest.approx(MU, abs=0.04)
    assert x.std() == pytest.approx(expected_std, rel=0.03)


@pytest.mark.slow
def test_full_ddpm_chain_on_linear_schedule():
    x, expected_std = _draw(ScheduleConfig(kind="linear"), SamplerConfig("ddpm", 1000), n=1000)
    assert expected_std == pytest.approx(S, rel=0.002)  # the full chain ends at t = 0, beta = 1e-4
    assert x.mean() == pytest.approx(MU, abs=0.04) and x.std() == pytest.approx(S, rel=0.03)


def test_wrong_denoiser_gives_wrong_statistics():
    """The statistics test can fail: a denoiser that believes in other data is caught."""

    class Biased(GaussianDenoiser):
        def __call__(self, x_t, signal, noise):
            eps, x0 = super().__call__(x_t, signal, noise)
            return eps * 0.8, x0

    x_T = seed_noise(range(500), (1, 2, 2)).double()
    x = sample(sample_steps(Biased(), SCHEDULES[0], x_T, SamplerConfig("ddim", 50)))
    assert abs(x.std().item() / S - 1) > 0.2


def test_ddim_eta0_is_deterministic_and_eta1_is_not_without_same_noise():
    sched = SCHEDULES[2]
    x_T = seed_noise([1, 2], (3, 4, 4)).double()
    a = sample(sample_steps(GaussianDenoiser(), sched, x_T, SamplerConfig("ddim", 10)))
    b = sample(sample_steps(GaussianDenoiser(), sched, x_T.clone(), SamplerConfig("ddim", 10)))
    assert torch.equal(a, b)
    c = sample(sample_steps(GaussianDenoiser(), sched, x_T, SamplerConfig("ddim", 10, 1.0), NoiseSource([1, 2])))
    d = sample(sample_steps(GaussianDenoiser(), sched, x_T, SamplerConfig("ddim", 10, 1.0), NoiseSource([5, 6])))
    assert not torch.allclose(c, d)


def test_step_states_are_complete_and_frozen():
    sched = SCHEDULES[0]
    x_T = seed_noise([0], (1, 2, 2)).double()
    den = GaussianDenoiser()
    states = list(sample_steps(den, sched, x_T, SamplerConfig("ddim", 7)))
    assert len(states) == 7 and den.calls == 7
    assert [s.index for s in states] == list(range(7))
    assert states[0].t == 999 and torch.equal(states[0].x_t, x_T)
    for a, b in zip(states, states[1:]):
        assert torch.equal(a.x_next, b.x_t)
        assert b.signal_rate > a.signal_rate and b.noise_rate < a.noise_rate
        assert a.signal_rate**2 + a.noise_rate**2 == pytest.approx(1.0)
    with pytest.raises(Exception):
        states[0].index = 3  # frozen
    assert isinstance(states[-1], StepState)
    # the last step lands on the predicted x0
    assert torch.allclose(states[-1].x_next, states[-1].pred_x0)


def test_seed_noise_depends_only_on_seed():
    a = seed_noise([7, 8, 9], (3, 8, 8))
    b = seed_noise([9, 7], (3, 8, 8))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    # golden values: torch's CPU Mersenne twister + Box-Muller is fixed across versions and machines
    g = torch.Generator().manual_seed(7)
    assert torch.equal(a[0], torch.randn((3, 8, 8), generator=g))


def test_ddim_inversion_round_trip():
    sched = SCHEDULES[2]
    g = torch.Generator().manual_seed(3)
    x0 = (MU + S * torch.randn(16, 3, 4, 4, generator=g)).double()
    den = GaussianDenoiser()
    errors = {}
    for steps, iters in [(10, 0), (50, 0), (200, 0), (50, 3)]:
        x_T = ddim_invert(den, sched, x0, steps, fixed_point_iterations=iters)
        back = sample(sample_steps(den, sched, x_T, SamplerConfig("ddim", steps)))
        errors[steps, iters] = (back - x0).abs().max().item()
        assert 0.8 < x_T.std().item() < 1.3  # a latent of noise scale, not an image
    # first-order inversion converges with the number of steps ...
    assert errors[10, 0] > errors[50, 0] > errors[200, 0], errors
    assert errors[10, 0] > 0.1
    # ... and fixed-point refinement makes the round trip nearly exact at 50 steps
    assert errors[50, 3] < 0.005, errors


def test_sampler_config_validation():
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerConfig("euler")
    with pytest.raises(ValueError, match="eta"):
        SamplerConfig("ddim", 10, 1.5)
    with pytest.raises(ValueError, match="positive integer"):
        SamplerConfig("ddim", 0)
    with pytest.raises(ValueError, match="ddpm takes no eta"):
        SamplerConfig("ddpm", 10, 0.5)
    with pytest.raises(ValueError, match="choose 1 to 1000"):
        list(sample_steps(GaussianDenoiser(), SCHEDULES[0], torch.zeros(1, 1, 2, 2), SamplerConfig("ddim", 1001)))
    with pytest.raises(ValueError, match="NoiseSource"):
        list(sample_steps(GaussianDenoiser(), SCHEDULES[0], torch.zeros(1, 1, 2, 2), SamplerConfig("ddpm", 10)))
    with pytest.raises(ValueError, match="NoiseSource"):
        sample_steps(GaussianDenoiser(), SCHEDULES[0], torch.zeros(1, 1, 2, 2), SamplerConfig("ddim", 10, 0.1))
    with pytest.raises(ValueError, match=r"\[N x C x H x W\]"):
        sample_steps(GaussianDenoiser(), SCHEDULES[0], torch.zeros(1, 2, 2), SamplerConfig("ddim", 10))
    # equal settings are equal keys, however the numbers were typed (the app's caches key on configs)
    assert SamplerConfig("ddim", 10, 0) == SamplerConfig("ddim", torch.tensor(10).numpy()[()], 0.0)
    assert type(SamplerConfig("ddim", 10, 0).eta) is float and type(SamplerConfig("ddim", 10).num_steps) is int


def test_clip_denoised_keeps_x0_in_range():
    class Wild(GaussianDenoiser):
        x0_range = (-1.0, 1.0)

        def __call__(self, x_t, signal, noise):
            return torch.zeros_like(x_t), 5 * torch.ones_like(x_t)

    x_T = seed_noise([0], (1, 2, 2))
    states = list(sample_steps(Wild(), SCHEDULES[0], x_T, SamplerConfig("ddim", 5, clip_denoised=True)))
    assert all(s.pred_x0.max() <= 1.0 for s in states)


def test_sampling_precision_defaults():
    """bf16 autocast by default on CUDA only; None is float32; anything else is a clear error."""
    import torch

    from diffusion_core.model import AUTO, sampling_autocast

    assert sampling_autocast(AUTO, torch.device("cuda", 0)) is torch.bfloat16
    assert sampling_autocast(AUTO, torch.device("cpu")) is None
    assert sampling_autocast(AUTO, torch.device("mps")) is None
    assert sampling_autocast(None, torch.device("cuda")) is None
    assert sampling_autocast(torch.float16, torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="autocast must be a torch dtype"):
        sampling_autocast("bf16", torch.device("cuda"))


# ----------------------------------------------------------------------------------- golden values
# The final sample of each sampler (linear schedule, 10 steps, seeds 0 and 1, [2 x 1 x 2 x 2] in
# float64, the Gaussian denoiser): a change to any step's math or to the order of its noise draws
# moves these numbers.
GOLDEN = {
    ("ddim", 0.0): [1.2958802275370465, 0.10890137189391433, -1.111035697087368, 0.6665746466697111,
                    0.7266998327503926, 0.4714821182228063, 0.33867555474180666, 0.7007949862248573],
    ("ddim", 1.0): [-0.27323646691299636, 0.5264648805861888, 0.4700784396190586, -0.13630627245663374,
                    0.5481965372867864, -0.06307639169712792, -0.053494207565764396, 0.30703978533423565],
    ("ddpm", 0.0): [-0.27323646691299636, 0.5264648805861889, 0.4700784396190587, -0.13630627245663363,
                    0.5481965372867865, -0.06307639169712781, -0.05349420756576451, 0.30703978533423576],
    ("dpmpp_2m", 0.0): [1.4265650557619585, 0.08382436895971226, -1.2961994874651845, 0.7146785686143382,
                        0.7826937091269671, 0.4939849358748999, 0.34375077170884727, 0.753389487531244],
}


def _golden_run(name: str, eta: float) -> torch.Tensor:
    x_T = seed_noise([0, 1], (1, 2, 2)).double()
    config = SamplerConfig(name, 10, eta)
    return sample(sample_steps(GaussianDenoiser(), ScheduleConfig(kind="linear"), x_T, config, NoiseSource([0, 1])))


@pytest.mark.parametrize("name, eta", list(GOLDEN), ids=[f"{n}-eta{e:g}" for n, e in GOLDEN])
def test_golden_samples(name, eta):
    torch.testing.assert_close(_golden_run(name, eta).flatten(), torch.tensor(GOLDEN[name, eta], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


def test_every_registered_sampler_has_golden_values():
    assert {name for name, _ in GOLDEN} == set(REGISTRY)


def test_ddim_eta1_is_ddpm_on_the_same_grid_and_noise():
    """DDIM's sigma at eta = 1 (Song et al. eq. 16) is the DDPM posterior's standard deviation, so
    with the same step noise the two samplers agree to rounding on any grid."""
    torch.testing.assert_close(_golden_run("ddim", 1.0), _golden_run("ddpm", 0.0), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registered_samplers_draw_noise_exactly_when_stochastic(name):
    """What ``SamplerConfig.stochastic`` says is what the sampler does: other step noise changes
    a stochastic run and leaves a deterministic one unchanged (the Interpolation page relies on it)."""
    for eta in (0.0, 0.5) if REGISTRY[name].uses_eta else (0.0,):
        config = SamplerConfig(name, 6, eta)
        x_T = seed_noise([3], (1, 2, 2)).double()
        a, b = (sample(sample_steps(GaussianDenoiser(), SCHEDULES[1], x_T, config, NoiseSource([s])))
                for s in (1, 2))
        assert torch.equal(a, b) != config.stochastic, (name, eta)


# ------------------------------------------------------------------------------------ the registry
@pytest.fixture
def toy_sampler(monkeypatch):
    """A sampler registered for one test: 'jump' predicts x0 once per step and jumps to the next
    level with the DDIM step at eta 0, on at most 4 steps of any schedule."""
    calls = []

    def jump(denoiser, x_T, grid, config, noise):
        calls.append((grid.num_steps, config))
        x = x_T
        for i in range(grid.num_steps):
            abar, abar_next = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
            signal, rate, eps, x0 = samplers._denoise(denoiser, x, abar, config.clip_denoised)
            x_next = samplers.D.ddim_step(x0, eps, abar_next, 0.0, None)
            yield StepState(i, grid.num_steps, float(grid.times[i]), signal, rate, x, x0, eps, x_next)
            x = x_next

    monkeypatch.setitem(REGISTRY, "jump", samplers.SamplerSpec("jump", "Jump", "a test sampler", jump,
                                                               uses_eta=False, stochastic=False,
                                                               max_steps=lambda schedule: 4))
    return calls


def test_a_registered_sampler_is_usable_everywhere(toy_sampler, capsys):
    from diffusion_core.cli import build_parser

    config = SamplerConfig("jump", 3)
    x_T = seed_noise([0], (1, 2, 2)).double()
    states = list(sample_steps(GaussianDenoiser(), SCHEDULES[0], x_T, config))
    assert toy_sampler == [(3, config)] and [s.index for s in states] == [0, 1, 2]
    ddim = list(sample_steps(GaussianDenoiser(), SCHEDULES[0], x_T, SamplerConfig("ddim", 3)))
    assert torch.equal(states[-1].x_next, ddim[-1].x_next)  # the same step math as DDIM at eta 0
    with pytest.raises(ValueError, match="beyond this model's schedule: choose 1 to 4"):
        sample_steps(GaussianDenoiser(), SCHEDULES[0], x_T, SamplerConfig("jump", 5))
    assert samplers.step_limit("jump", SCHEDULES[0]) == 4 and samplers.step_limit("ddim", SCHEDULES[0]) == 1000
    with pytest.raises(ValueError, match="jump takes no eta"):
        SamplerConfig("jump", 3, 0.5)
    args = build_parser().parse_args(["sample", "model.json", "--sampler", "jump"])
    assert args.sampler == "jump"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--help"])
    assert "jump: a test sampler" in " ".join(capsys.readouterr().out.split())


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="'ddim' is registered already"):
        samplers.register("ddim", "Another DDIM", "a clash")(lambda *args: iter(()))
    assert REGISTRY["ddim"].steps is samplers.ddim_steps
