"""The Gaussian diffusion process: q(x_t | x_0), its posterior, and conversions between
predicted noise, predicted x_0 and v. Pure tensor math; no network, no loop.

Symbols: ``signal`` = alpha_t = sqrt(abar_t), ``noise`` = sigma_t = sqrt(1 - abar_t), ``eps`` = the
standard normal noise, ``x0`` = the clean image in the network's (normalised) units. Rates are
Python floats or tensors that broadcast against the images ([N x 1 x 1 x 1] or scalars).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

PredictionType = Literal["eps", "v"]


def q_sample(x0: torch.Tensor, signal, noise, eps: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) (Ho et al. 2020, eq. 4), reparametrised:
    x_t = alpha_t x_0 + sigma_t eps. [N x C x H x W]."""
    return signal * x0 + noise * eps


def q_mean_variance(x0: torch.Tensor, signal, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean alpha_t x_0 and variance sigma_t^2 of q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
    return signal * x0, torch.full_like(x0, 1.0) * noise**2


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, signal, noise) -> torch.Tensor:
    """x_0 = (x_t - sigma_t eps) / alpha_t (inverting eq. 4; Ho et al. 2020, eq. 15)."""
    return (x_t - noise * eps) / signal


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, signal, noise) -> torch.Tensor:
    """eps = (x_t - alpha_t x_0) / sigma_t."""
    return (x_t - signal * x0) / noise


def v_from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, signal, noise) -> torch.Tensor:
    """v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, sec. 4)."""
    return signal * eps - noise * x0


def eps_x0_from_v(x_t: torch.Tensor, v: torch.Tensor, signal, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """From v back to (eps, x_0) on a variance-preserving path (alpha^2 + sigma^2 = 1):
    x_0 = alpha_t x_t - sigma_t v, eps = sigma_t x_t + alpha_t v (Salimans & Ho 2022, sec. 4)."""
    return noise * x_t + signal * v, signal * x_t - noise * v


def posterior_mean_variance(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_prev: float
                            ) -> tuple[torch.Tensor, float]:
    """q(x_{t'} | x_t, x_0) for t' < t on any pair of levels (Ho et al. 2020, eqs. 6-7).

    With beta = 1 - abar_t / abar_prev (the effective beta of a respaced step):
    mean = sqrt(abar_prev) beta / (1 - abar_t) x_0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t,
    variance beta_tilde = beta (1 - abar_prev) / (1 - abar_t).
    """
    beta = 1.0 - abar_t / abar_prev
    coef1 = math.sqrt(abar_prev) * beta / (1.0 - abar_t)  # posterior_mean_coef1
    coef2 = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)  # posterior_mean_coef2
    variance = beta * (1.0 - abar_prev) / (1.0 - abar_t)
    return coef1 * x0 + coef2 * x_t, variance


def ddim_sigma(abar_t: float, abar_prev: float, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    (Song et al. 2020, eq. 16). eta = 1 gives the DDPM posterior standard deviation."""
    return eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_prev)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, abar_prev: float, sigma: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM update to the level abar_prev (Song et al. 2020, eq. 12):
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z."""
    direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
    x_prev = math.sqrt(abar_prev) * x0 + direction * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("a stochastic DDIM step (sigma > 0) needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddpm_step(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float, abar_prev: float,
              noise: torch.Tensor | None, variance_kind: str = "posterior") -> torch.Tensor:
    """Ancestral step x_prev ~ N(mu_tilde(x_t, x0_hat), sigma^2 I) (Ho et al. 2020, Algorithm 2).

    ``variance_kind`` "posterior": sigma^2 = beta_tilde, the posterior variance of eq. 7 (diffusers'
    variance_type fixed_small); "beta": sigma^2 = beta = 1 - abar_t / abar_prev (fixed_large). Ho et
    al. (sec. 3.2) found both choices to give similar results. The last step, to the clean level
    (abar_prev = 1), adds no noise under either (Algorithm 2: z = 0 at t = 1)."""
    mean, variance = posterior_mean_variance(x_t, x0, abar_t, abar_prev)
    if variance_kind == "beta":
        variance = 1.0 - abar_t / abar_prev if abar_prev < 1.0 else 0.0
    elif variance_kind != "posterior":
        raise ValueError(f"variance_kind must be posterior or beta, got {variance_kind!r}")
    if variance > 0:
        if noise is None:
            raise ValueError("an ancestral step needs noise")
        return mean + math.sqrt(variance) * noise
    return mean


def log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(abar / (1 - abar)) (Lu et al. 2022, sec. 3)."""
    return 0.5 * math.log(abar / (1.0 - abar))


def dpm_solver_pp_2m_step(x_t: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None,
                          abar_t: float, abar_next: float, h_prev: float | None) -> tuple[torch.Tensor, float]:
    """DPM-Solver++(2M), one multistep update (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    h = lambda_next - lambda_t;  with r = h_prev / h,
    D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev          (second order; D = x0 on the first step)
    x_next = (sigma_next / sigma_t) x_t - alpha_next (exp(-h) - 1) D.
    The final step to the clean level (sigma_next = 0) returns x0 (first order, as samplers do
    for stability at few steps). Returns (x_next, h).
    """
    if abar_next >= 1.0:
        return x0, math.inf
    lam_t, lam_next = log_snr(abar_t), log_snr(abar_next)
    h = lam_next - lam_t
    sigma_t, sigma_next = math.sqrt(1.0 - abar_t), math.sqrt(1.0 - abar_next)
    alpha_next = math.sqrt(abar_next)
    if x0_prev is None or h_prev is None:
        d = x0
    else:
        r = h_prev / h
        d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
    return (sigma_next / sigma_t) * x_t - alpha_next * math.expm1(-h) * d, h


class TrainingNoiseLevels:
    """Draws training noise levels: t ~ U{0..T-1} (Ho et al. 2020, Algorithm 1) for discrete
    schedules, t ~ U(0, 1) for the continuous cosine schedule of the Keras DDIM example.

    The abar table is computed once in float64 and kept on the device in float32.
    """

    def __init__(self, schedule, device: torch.device | str):
        from .schedules import discrete_alphas_cumprod

        self.schedule = schedule
        self.device = torch.device(device)
        if schedule.is_discrete:
            table = discrete_alphas_cumprod(schedule)
            self.abar = torch.from_numpy(table.astype(np.float32)).to(self.device)
        self.start = math.acos(schedule.max_signal_rate)
        self.end = math.acos(schedule.min_signal_rate)

    def draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (signal rates, noise rates), each float32 [B] on the device."""
        if self.schedule.is_discrete:
            t = torch.randint(0, len(self.abar), (batch,), generator=generator, device=self.device)
            abar = self.abar[t]
            return abar.sqrt(), (1.0 - abar).sqrt()
        t = torch.rand(batch, generator=generator, device=self.device)
        angle = self.start + t * (self.end - self.start)
        return torch.cos(angle), torch.sin(angle)
