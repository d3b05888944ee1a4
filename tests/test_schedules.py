import math

import numpy as np
import pytest
import torch

from diffusion_core import diffusion as D
from diffusion_core.schedules import (ScheduleConfig, continuous_cosine_rates, cosine_alphas_cumprod,
                                      discrete_alphas_cumprod, linear_betas, signal_noise_rates, time_grid)


def test_linear_betas_endpoints_and_float64():
    b = linear_betas()
    assert b.dtype == np.float64 and len(b) == 1000
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(kind):
    abar = discrete_alphas_cumprod(ScheduleConfig(kind=kind))
    assert abar.dtype == np.float64
    assert np.all(np.diff(abar) < 0)
    assert 0 < abar[-1] < abar[0] < 1


def test_linear_alphas_cumprod_is_product_of_one_minus_beta():
    abar = discrete_alphas_cumprod(ScheduleConfig(kind="linear"))
    b = linear_betas()
    assert abar[0] == pytest.approx(1 - b[0])
    assert abar[499] == pytest.approx(np.prod(1 - b[:500]), rel=1e-12)
    # the DDPM paper's schedule ends with almost no signal left: abar_T ~ 4e-5
    assert abar[-1] == pytest.approx(4.04e-5, rel=0.02)


def test_cosine_schedule_matches_nichol_dhariwal_formula():
    abar = cosine_alphas_cumprod(1000, s=0.008)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):
        assert abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_continuous_cosine_rates():
    t = np.linspace(0, 1, 101)
    signal, noise = continuous_cosine_rates(t)
    assert signal[0] == pytest.approx(0.95) and signal[-1] == pytest.approx(0.02)
    assert np.allclose(signal**2 + noise**2, 1.0)
    assert np.all(np.diff(signal) < 0)
    # the angle is linear in t
    angle = np.arctan2(noise, signal)
    assert np.allclose(np.diff(angle), np.diff(angle)[0])


def test_signal_noise_rates_discrete_uses_table():
    cfg = ScheduleConfig(kind="linear")
    s, n = signal_noise_rates(cfg, np.array([0, 999]))
    abar = discrete_alphas_cumprod(cfg)
    assert s[1] == pytest.approx(math.sqrt(abar[999])) and n[0] == pytest.approx(math.sqrt(1 - abar[0]))


def test_time_grid_trailing_spacing():
    cfg = ScheduleConfig(kind="linear")
    full = time_grid(cfg, 1000)
    assert list(full.times) == list(range(999, -1, -1))
    assert list(time_grid(cfg, 1).times) == [999]
    assert list(time_grid(cfg, 10).times) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    g = time_grid(cfg, 3)
    assert list(g.times) == [999, 666, 332]
    assert g.alphas_cumprod[-1] == 1.0 and len(g.alphas_cumprod) == 4
    assert np.all(np.diff(g.alphas_cumprod) > 0)


def test_time_grid_continuous():
    g = time_grid(ScheduleConfig(), 4)
    assert np.allclose(g.times, [1.0, 0.75, 0.5, 0.25])
    assert g.alphas_cumprod[0] == pytest.approx(0.02**2)


@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5])
def test_time_grid_rejects_bad_step_counts(steps):
    with pytest.raises(ValueError, match="from 1 to 1000"):
        time_grid(ScheduleConfig(kind="linear"), steps)


def test_bad_schedule_config():
    with pytest.raises(ValueError, match="unknown schedule"):
        ScheduleConfig(kind="quadratic")
    with pytest.raises(ValueError):
        ScheduleConfig(min_signal_rate=0.99)


def test_q_sample_mean_and_variance_match_formula():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    signal, noise = 0.6, 0.8
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = D.q_sample(x0, signal, noise, eps)
    mean, var = D.q_mean_variance(x0, signal, noise)
    assert x_t.mean().item() == pytest.approx(mean[0].item(), abs=0.01)  # alpha x0 = 0.42
    assert x_t.var().item() == pytest.approx(var[0].item(), rel=0.01)  # sigma^2 = 0.64


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    s, n = math.cos(0.7), math.sin(0.7)
    x_t = D.q_sample(x0, s, n, eps)
    assert torch.allclose(D.x0_from_eps(x_t, eps, s, n), x0, atol=1e-5)
    assert torch.allclose(D.eps_from_x0(x_t, x0, s, n), eps, atol=1e-5)
    v = D.v_from_eps_x0(eps, x0, s, n)
    eps2, x02 = D.eps_x0_from_v(x_t, v, s, n)
    assert torch.allclose(eps2, eps, atol=1e-5) and torch.allclose(x02, x0, atol=1e-5)


def test_ddim_eta_one_full_grid_equals_ddpm_posterior():
    """Song et al. 2020: with eta = 1, sigma_t^2 is the DDPM posterior variance, and the whole
    update is the DDPM ancestral step (same mean)."""
    cfg = ScheduleConfig(kind="linear")
    abar = time_grid(cfg, 1000).alphas_cumprod
    g = torch.Generator().manual_seed(2)
    x0, eps, z = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for i in (0, 1, 500, 998, 999):
        a_t, a_prev = float(abar[i]), float(abar[i + 1])
        _, var = D.posterior_mean_variance(x0, x0, a_t, a_prev)
        sigma = D.ddim_sigma(a_t, a_prev, 1.0)
        assert sigma**2 == pytest.approx(var, rel=1e-10, abs=1e-15)
        x_t = D.q_sample(x0, math.sqrt(a_t), math.sqrt(1 - a_t), eps)
        ddim = D.ddim_step(x0, eps, a_prev, sigma, z)
        ddpm = D.ddpm_step(x_t, x0, a_t, a_prev, z)
        assert torch.allclose(ddim, ddpm, atol=1e-9)
    # and the DDPM posterior variance on the full grid is beta_tilde = beta (1 - abar_prev)/(1 - abar)
    betas = linear_betas()
    t = 500
    abar_full = discrete_alphas_cumprod(cfg)
    expected = betas[t] * (1 - abar_full[t - 1]) / (1 - abar_full[t])
    assert D.posterior_mean_variance(x0, x0, abar_full[t], abar_full[t - 1])[1] == pytest.approx(expected, rel=1e-9)


# Golden values: computed once from the committed schedules and written here as literals (not the
# formula again), so that a changed constant, an off-by-one index or a lost clip fails. A committed
# schedule never changes meaning: a checkpoint trained on it must keep getting the same rates.
GOLDEN_LINEAR_ABAR = {0: 0.9999, 1: 0.9997800920720721, 99: 0.89701814567496, 499: 0.07858724288177824,
                      998: 4.118193638138445e-05, 999: 4.035829765375676e-05}
GOLDEN_COSINE_ABAR = {0: 0.999958715775178, 1: 0.9999125759273678, 99: 0.9720927371139696,
                      499: 0.4938435904406382, 998: 2.4287669070348544e-06, 999: 2.4287669070348567e-09}
GOLDEN_GRID_5 = {  # time_grid(config, 5): times and alphas_cumprod (the last is the clean end point)
    "linear": ([999, 799, 599, 399, 199], [4.035829765375676e-05, 0.001532089549647948, 0.025879389423334884,
                                           0.19514644493343236, 0.6590385082317941, 1.0]),
    "cosine": ([999, 799, 599, 399, 199], [2.4287669070348567e-09, 0.09404561267665389, 0.34080963975932427,
                                           0.6474782111465038, 0.8987059205995089, 1.0]),
    "continuous_cosine": ([1.0, 0.8, 0.6, 0.4, 0.2], [0.00039999999999999877, 0.06943205072238971,
                                                      0.2411305183160582, 0.4745549043539713,
                                                      0.7140465250787851, 1.0]),
}


def test_golden_linear_schedule():
    """DDPM (Ho et al.): betas 1e-4..0.02 over 1000 steps."""
    b = linear_betas()
    assert b[[0, 1, 500, 999]] == pytest.approx([1e-4, 0.00011991991991991993, 0.010059959959959959, 0.02],
                                                rel=1e-12)
    abar = discrete_alphas_cumprod(ScheduleConfig(kind="linear"))
    assert {t: abar[t] for t in GOLDEN_LINEAR_ABAR} == pytest.approx(GOLDEN_LINEAR_ABAR, rel=1e-12)


def test_golden_cosine_schedule():
    """Nichol-Dhariwal cosine, s = 0.008, 1000 steps; the last beta is clipped to 0.999."""
    abar = discrete_alphas_cumprod(ScheduleConfig(kind="cosine"))
    assert {t: abar[t] for t in GOLDEN_COSINE_ABAR} == pytest.approx(GOLDEN_COSINE_ABAR, rel=1e-12)
    betas = 1 - abar[1:] / abar[:-1]
    assert betas[[499, 997, 998]] == pytest.approx([0.003155691441585007, 0.7499993929011166, 0.999], rel=1e-9)


def test_golden_continuous_cosine_rates():
    """The Keras DDIM example's schedule: signal rate 0.95 at t = 0 down to 0.02 at t = 1."""
    signal, noise = continuous_cosine_rates(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert signal == pytest.approx([0.95, 0.8104543226685387, 0.5944798383066962, 0.3224437307607213,
                                    0.01999999999999997], rel=1e-12)
    assert noise == pytest.approx([0.31224989991992, 0.5858018358351911, 0.8041105159409647, 0.94658863319454,
                                   0.999799979995999], rel=1e-12)


@pytest.mark.parametrize("kind", sorted(GOLDEN_GRID_5))
def test_golden_time_grids(kind):
    times, abar = GOLDEN_GRID_5[kind]
    g = time_grid(ScheduleConfig(kind=kind), 5)
    assert g.times == pytest.approx(times, abs=1e-12)
    assert g.alphas_cumprod == pytest.approx(abar, rel=1e-12)
