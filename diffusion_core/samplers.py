"""Samplers as generators of frozen step states; ``sample()`` drains one.

Every sampler walks a ``TimeGrid`` (schedules.time_grid) from the noisiest level to clean, asks
a denoiser for (predicted noise, predicted x0) at each level, and applies one pure step function
from ``diffusion.py``. The loop owns no math and the math owns no loop.

A denoiser is any callable ``(x_t [N x C x H x W], signal_rate: float, noise_rate: float) ->
(pred_eps, pred_x0)``, e.g. ``model.Denoiser`` or an analytic one in the tests.

Randomness: starting noise is an argument (``seed_noise`` draws it on the CPU per seed, so seed 7
gives the same image on every machine and in any batch); stochastic steps draw from a
``NoiseSource`` of per-image CPU generators for the same reason.

The registry: every sampler is one generator function with the signature ``Sampler``,
``(denoiser, x_T, grid, config, noise) -> Iterator[StepState]``, registered under its name with
``@register``. ``SamplerConfig`` validates against the registry, ``sample_steps`` dispatches
through it, and the CLI's ``--sampler`` choices, the app's sampler box and the step limits all
read it. A new sampler is its step math in ``diffusion.py``, one registered function here, and
its tests in ``tests/test_samplers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Protocol, Sequence

import numpy as np
import torch

from . import diffusion as D
from .schedules import ScheduleConfig, TimeGrid, max_sampling_steps, time_grid

Denoise = Callable[[torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]]
DEFAULT_SAMPLER = "ddim"  # the CLI's and the app's default


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler and its settings; ``name`` is a key of ``REGISTRY``."""

    name: str = DEFAULT_SAMPLER
    num_steps: int = 50  # 1..the sampler's step limit; DDPM with num_steps = T is the full ancestral chain
    eta: float = 0.0  # samplers that use it (DDIM): 0 deterministic, 1 the DDPM posterior variance
    clip_denoised: bool = False  # clip predicted x0 to the data range, then recompute eps
    # DDPM only, the variance of each ancestral step (diffusion.ddpm_step): "posterior" beta_tilde
    # (diffusers' variance_type fixed_small), "beta" beta_t (fixed_large)
    ddpm_variance: Literal["posterior", "beta"] = "posterior"

    def __post_init__(self) -> None:
        if self.name not in REGISTRY:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(REGISTRY)}")
        if not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 1:
            raise ValueError(f"number of steps must be a positive integer, got {self.num_steps!r}")
        if not 0.0 <= float(self.eta) <= 1.0 or np.isnan(self.eta):
            raise ValueError(f"eta must be between 0 and 1, got {self.eta}")
        if self.eta and not self.spec.uses_eta:
            takers = ", ".join(n for n, s in REGISTRY.items() if s.uses_eta)
            raise ValueError(f"{self.name} takes no eta (only {takers} does), got {self.eta}")
        if self.ddpm_variance not in ("posterior", "beta"):
            raise ValueError(f"ddpm_variance must be posterior or beta, got {self.ddpm_variance!r:.40}")
        if self.ddpm_variance != "posterior" and self.name != "ddpm":
            raise ValueError(f"ddpm_variance {self.ddpm_variance!r} applies to the ddpm sampler only, not {self.name}")
        # plain Python values, so that equal configs hash alike (the app's caches key on them)
        object.__setattr__(self, "num_steps", int(self.num_steps))
        object.__setattr__(self, "eta", float(self.eta))
        object.__setattr__(self, "clip_denoised", bool(self.clip_denoised))

    @property
    def spec(self) -> SamplerSpec:
        return REGISTRY[self.name]

    @property
    def stochastic(self) -> bool:
        """Whether the steps draw noise: always for a stochastic sampler, for one with eta when eta > 0."""
        return self.spec.stochastic or (self.spec.uses_eta and self.eta > 0)


@dataclass(frozen=True)
class StepState:
    """What one sampling step saw and produced. Tensors [N x C x H x W] on the sampling device."""

    index: int  # 0-based step number
    num_steps: int
    t: float  # schedule time of x_t
    signal_rate: float  # alpha_t
    noise_rate: float  # sigma_t
    x_t: torch.Tensor  # input of this step
    pred_x0: torch.Tensor  # denoiser's estimate of x_0 from x_t
    pred_noise: torch.Tensor  # denoiser's estimate of eps from x_t
    x_next: torch.Tensor  # output of this step: x at the next (less noisy) level, x_0 after the last


def seed_noise(seeds: Sequence[int], shape: tuple[int, int, int], device="cpu") -> torch.Tensor:
    """Standard normal noise [N x C x H x W], image i drawn from its own CPU generator seeded with
    seeds[i], so an image depends only on its seed (not on batch size, order or machine)."""
    out = []
    for seed in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        out.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(out).to(device)


class NoiseSource:
    """Noise for stochastic steps (DDPM, DDIM eta > 0).

    By default one CPU generator per image, so an image depends only on its seed. With
    ``per_image=False`` one generator on ``device`` serves the whole batch (seeded from the
    seeds): much faster for large batches on a GPU (evaluation), but an image then also depends
    on the batch it was drawn in."""

    def __init__(self, seeds: Sequence[int], device="cpu", per_image: bool = True):
        # offset so that step noise never repeats the starting noise of the same seed
        seeds = [int(s) + 0x5EED for s in seeds]
        self.n, self.device, self.per_image = len(seeds), device, per_image
        if per_image:
            self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        else:
            self.generator = torch.Generator(device=device).manual_seed(hash(tuple(seeds)) % (2**63))

    def __call__(self, shape: tuple[int, int, int]) -> torch.Tensor:
        if not self.per_image:
            return torch.randn((self.n, *shape), generator=self.generator, device=self.device)
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(self.device)


# ------------------------------------------------------------------------------------ the registry
class Sampler(Protocol):
    """The one signature of every sampler: walk ``grid`` from ``x_T`` [N x C x H x W] with the
    settings of ``config``, drawing step noise from ``noise`` (None only for deterministic runs),
    and yield one ``StepState`` per grid level. Called through ``sample_steps``, which checks
    the arguments."""

    def __call__(self, denoiser: Denoise, x_T: torch.Tensor, grid: TimeGrid, config: SamplerConfig,
                 noise: NoiseSource | None) -> Iterator[StepState]: ...


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: what the CLI, the app and ``SamplerConfig`` know of it."""

    name: str  # SamplerConfig.name and the CLI's --sampler value
    label: str  # shown in the app's sampler box
    summary: str  # one line for --help and the app's help text
    steps: Sampler  # the step generator
    uses_eta: bool  # reads config.eta (other samplers refuse an eta)
    stochastic: bool  # draws noise at every step whatever eta (a sampler with eta does when eta > 0)
    max_steps: Callable[[ScheduleConfig], int]  # most steps it may take on a schedule


REGISTRY: dict[str, SamplerSpec] = {}  # by name, in the order the app and --help list them


def register(name: str, label: str, summary: str, *, uses_eta: bool = False, stochastic: bool = False,
             max_steps: Callable[[ScheduleConfig], int] = max_sampling_steps) -> Callable[[Sampler], Sampler]:
    """Decorator: add a ``Sampler`` function to ``REGISTRY`` under ``name``. The default step
    limit is the schedule's (``schedules.max_sampling_steps``)."""

    def add(fn: Sampler) -> Sampler:
        if name in REGISTRY:
            raise ValueError(f"a sampler named {name!r} is registered already")
        REGISTRY[name] = SamplerSpec(name, label, summary, fn, uses_eta, stochastic, max_steps)
        return fn

    return add


def step_limit(name: str, schedule: ScheduleConfig) -> int:
    """The most steps sampler ``name`` may take on ``schedule``."""
    return REGISTRY[name].max_steps(schedule)


def check_steps(config: SamplerConfig, schedule: ScheduleConfig) -> None:
    """Raise ValueError if ``config`` takes more steps than its sampler allows on ``schedule``."""
    limit = step_limit(config.name, schedule)
    if config.num_steps > limit:
        raise ValueError(f"{config.num_steps} steps is beyond this model's schedule: choose 1 to {limit}")


def _denoise(denoiser: Denoise, x: torch.Tensor, abar: float, clip: bool):
    signal, noise = float(np.sqrt(abar)), float(np.sqrt(1.0 - abar))
    eps, x0 = denoiser(x, signal, noise)
    x_range = getattr(denoiser, "x0_range", None)
    if clip and x_range is not None:
        x0 = x0.clamp(*x_range)
        eps = D.eps_from_x0(x, x0, signal, noise)
    return signal, noise, eps, x0


@register("ddpm", "DDPM (ancestral)", "ancestral (Ho et al.), stochastic", stochastic=True)
def ddpm_steps(denoiser: Denoise, x_T: torch.Tensor, grid: TimeGrid, config: SamplerConfig,
               noise: NoiseSource | None) -> Iterator[StepState]:
    """Ancestral DDPM (Ho et al. 2020, Algorithm 2) on the full grid or a respaced one, using the
    posterior mean of eqs. 6-7 between consecutive grid levels and the variance
    ``config.ddpm_variance`` names (beta_tilde or beta)."""
    x = x_T
    for i in range(grid.num_steps):
        abar, abar_prev = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        signal, noise_rate, eps, x0 = _denoise(denoiser, x, abar, config.clip_denoised)
        z = noise(tuple(x.shape[1:])) if abar_prev < 1.0 else None
        x_next = D.ddpm_step(x, x0, abar, abar_prev, z, config.ddpm_variance)
        yield StepState(i, grid.num_steps, float(grid.times[i]), signal, noise_rate, x, x0, eps, x_next)
        x = x_next


@register("ddim", "DDIM", "Song et al., deterministic at eta 0", uses_eta=True)
def ddim_steps(denoiser: Denoise, x_T: torch.Tensor, grid: TimeGrid, config: SamplerConfig,
               noise: NoiseSource | None) -> Iterator[StepState]:
    """DDIM (Song et al. 2020, eq. 12 with sigma from eq. 16); eta = 0 is deterministic. Step i
    goes to the level ``grid.ddim_targets[i]`` (the next grid level unless the schedule says
    otherwise: schedules.ddim_target_levels)."""
    x = x_T
    for i in range(grid.num_steps):
        abar, abar_prev = float(grid.alphas_cumprod[i]), float(grid.ddim_targets[i])
        signal, noise_rate, eps, x0 = _denoise(denoiser, x, abar, config.clip_denoised)
        sigma = D.ddim_sigma(abar, abar_prev, config.eta)
        z = noise(tuple(x.shape[1:])) if sigma > 0 else None
        x_next = D.ddim_step(x0, eps, abar_prev, sigma, z)
        yield StepState(i, grid.num_steps, float(grid.times[i]), signal, noise_rate, x, x0, eps, x_next)
        x = x_next


@register("dpmpp_2m", "DPM-Solver++(2M)", "DPM-Solver++(2M) (Lu et al.), deterministic, good in 10 to 20 steps")
def dpm_solver_pp_2m_steps(denoiser: Denoise, x_T: torch.Tensor, grid: TimeGrid, config: SamplerConfig,
                           noise: NoiseSource | None) -> Iterator[StepState]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): deterministic, second order multistep,
    data prediction; good images in 10 to 20 steps."""
    x, x0_prev, h_prev = x_T, None, None
    for i in range(grid.num_steps):
        abar, abar_next = float(grid.alphas_cumprod[i]), float(grid.alphas_cumprod[i + 1])
        signal, noise_rate, eps, x0 = _denoise(denoiser, x, abar, config.clip_denoised)
        x_next, h = D.dpm_solver_pp_2m_step(x, x0, x0_prev, abar, abar_next, h_prev)
        yield StepState(i, grid.num_steps, float(grid.times[i]), signal, noise_rate, x, x0, eps, x_next)
        x, x0_prev, h_prev = x_next, x0, h


def sample_steps(denoiser: Denoise, schedule: ScheduleConfig, x_T: torch.Tensor, config: SamplerConfig,
                 noise_source: NoiseSource | None = None) -> Iterator[StepState]:
    """The step generator of the sampler ``config`` names, on the schedule's time grid. Checks the
    step limit, the shape of ``x_T`` [N x C x H x W] and that a stochastic run has its noise."""
    check_steps(config, schedule)
    if x_T.ndim != 4:
        raise ValueError(f"starting noise must be [N x C x H x W], got shape {tuple(x_T.shape)}")
    if config.stochastic and noise_source is None:
        raise ValueError(f"{config.name} with these settings is stochastic: pass a NoiseSource")
    return config.spec.steps(denoiser, x_T, time_grid(schedule, config.num_steps), config, noise_source)


def sample(steps: Iterator[StepState]) -> torch.Tensor:
    """Drain a step generator and return the final x_0 [N x C x H x W]."""
    state = None
    for state in steps:
        pass
    if state is None:
        raise ValueError("the sampler produced no steps")
    return state.x_next


def ddim_invert_steps(denoiser: Denoise, schedule: ScheduleConfig, x0: torch.Tensor, num_steps: int,
                      fixed_point_iterations: int = 0) -> Iterator[StepState]:
    """DDIM inversion: run the deterministic DDIM ODE backwards, from a clean image x_0 to the
    starting noise x_T that DDIM (eta = 0, same ``num_steps``) maps back to x_0.

    Walks the sampling grid in reverse. Sampling maps x_n (noisier level n) to
    x_c = sqrt(abar_c) x0_hat(x_n) + sqrt(1 - abar_c) eps(x_n)   (Song et al. 2020, eq. 12, eta = 0),
    so inverting a step means solving x_n = sqrt(abar_n) (x_c - sigma_c eps(x_n)) / alpha_c
    + sigma_n eps(x_n) for x_n. The usual first-order inversion (eq. 13 read backwards) evaluates
    eps at the current x instead; ``fixed_point_iterations`` > 0 then refines x_n by fixed-point
    iteration (Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative Diffusion
    Inversion"), one denoiser call each, which makes the round trip much tighter where steps are
    large (few steps, or the continuous schedule's noisy last level). The states' ``x_next`` is
    the noisier latent; the last one is x_T.
    """
    grid = time_grid(schedule, num_steps)
    x = x0
    for i in range(grid.num_steps):
        j = grid.num_steps - 1 - i  # the sampling step this one undoes: from its target back to its level
        abar_cur, abar_next = float(grid.ddim_targets[j]), float(grid.alphas_cumprod[j])
        guess = x
        for _ in range(fixed_point_iterations + 1):
            signal, noise, eps, _ = _denoise(denoiser, guess, abar_next, False)
            if abar_cur >= 1.0:
                x0_hat = x
            else:
                x0_hat = D.x0_from_eps(x, eps, float(np.sqrt(abar_cur)), float(np.sqrt(1.0 - abar_cur)))
            guess = D.ddim_step(x0_hat, eps, abar_next, 0.0, None)
        yield StepState(i, grid.num_steps, float(grid.times[j]), signal, noise, x, x0_hat, eps, guess)
        x = guess


def ddim_invert(denoiser: Denoise, schedule: ScheduleConfig, x0: torch.Tensor, num_steps: int,
                fixed_point_iterations: int = 0) -> torch.Tensor:
    """The starting noise x_T [N x C x H x W] whose DDIM (eta = 0) sample is x0."""
    return sample(ddim_invert_steps(denoiser, schedule, x0, num_steps, fixed_point_iterations))
