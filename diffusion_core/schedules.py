"""Noise schedules: pure functions in float64, each citing its equation.

Every schedule is reduced to the same two quantities, the signal rate ``alpha_t = sqrt(abar_t)``
and the noise rate ``sigma_t = sqrt(1 - abar_t)`` of the forward process

    q(x_t | x_0) = N(x_t; alpha_t x_0, sigma_t^2 I)                    (Ho et al. 2020, eq. 4)

so that samplers and the network (which is conditioned on the noise variance ``sigma_t^2``) never
need to know which schedule a model was trained with.

Discrete schedules (DDPM) index time by the integer t in {0, ..., T-1}; the continuous schedule
of the reference DDIM runs uses t in [0, 1]. A committed schedule never changes meaning: old
checkpoints name their schedule by ``ScheduleConfig`` and must keep producing the same rates.

Symbol map: ``betas`` = beta_t, ``alphas_cumprod`` = abar_t, ``signal_rate`` = sqrt(abar_t),
``noise_rate`` = sqrt(1 - abar_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ScheduleKind = Literal["linear", "scaled_linear", "cosine", "trained_betas", "continuous_cosine"]
Spacing = Literal["trailing", "leading", "linspace"]
DdimTarget = Literal["next", "stride"]
MAX_TRAINED_BETAS = 100_000  # entries of a trained_betas schedule (T), as num_timesteps' bound
# the fields that give each kind its noise levels (a kind ignores the others): two schedules of one
# kind that agree on these have the same rates
RATE_FIELDS: dict[str, tuple[str, ...]] = {
    "linear": ("num_timesteps", "beta_start", "beta_end"),
    "scaled_linear": ("num_timesteps", "beta_start", "beta_end"),
    "cosine": ("num_timesteps", "cosine_s"),
    "trained_betas": ("num_timesteps", "trained_betas"),
    "continuous_cosine": ("max_signal_rate", "min_signal_rate"),
}


@dataclass(frozen=True)
class ScheduleConfig:
    """Which noise schedule a model was trained with. Saved in every checkpoint."""

    kind: ScheduleKind = "continuous_cosine"
    num_timesteps: int = 1000  # T, discrete schedules only
    beta_start: float = 1e-4  # linear schedule only
    beta_end: float = 0.02  # linear schedule only
    cosine_s: float = 0.008  # Nichol & Dhariwal offset, discrete cosine only
    max_signal_rate: float = 0.95  # continuous cosine only: signal rate at t = 0
    min_signal_rate: float = 0.02  # continuous cosine only: signal rate at t = 1
    spacing: Spacing = "trailing"  # discrete only: which T-grid steps a sampler visits (time_grid)
    steps_offset: int = 0  # discrete "leading" spacing only: added to every grid step (diffusers' steps_offset)
    trained_betas: tuple[float, ...] = ()  # kind "trained_betas" only: beta_t for t = 0..T-1 as given (T entries)
    # discrete only, where DDIM (and its inversion) steps: "next" the next grid level; "stride" the level
    # t - floor(T / S) whatever the grid, as diffusers' DDIMScheduler does (time_grid, ddim_targets)
    ddim_target: DdimTarget = "next"
    set_alpha_to_one: bool = True  # discrete only: DDIM's last step goes to clean (abar = 1), else to abar_0

    def __post_init__(self) -> None:
        if self.kind not in RATE_FIELDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if not isinstance(self.num_timesteps, int) or isinstance(self.num_timesteps, bool):
            raise ValueError(f"num_timesteps must be a whole number, got {self.num_timesteps!r}")
        if self.spacing not in ("trailing", "leading", "linspace"):
            raise ValueError(f"spacing must be trailing, leading or linspace, got {self.spacing!r}")
        if not isinstance(self.steps_offset, int) or not 0 <= self.steps_offset < max(self.num_timesteps, 1):
            raise ValueError(f"steps_offset must be an integer from 0 to num_timesteps - 1, got {self.steps_offset!r}")
        if self.steps_offset and self.spacing != "leading":
            raise ValueError(f"steps_offset applies to leading spacing only, got spacing {self.spacing!r}")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError("need 0 < beta_start < beta_end < 1")
        if not 0 < self.min_signal_rate < self.max_signal_rate <= 1:
            raise ValueError("need 0 < min_signal_rate < max_signal_rate <= 1")
        if self.ddim_target not in ("next", "stride") or not isinstance(self.set_alpha_to_one, bool):
            raise ValueError(f"ddim_target must be next or stride and set_alpha_to_one true or false, got "
                             f"{self.ddim_target!r:.40} and {self.set_alpha_to_one!r:.40}")
        if not self.is_discrete and (self.ddim_target != "next" or not self.set_alpha_to_one):
            raise ValueError("ddim_target and set_alpha_to_one apply to discrete schedules only")
        object.__setattr__(self, "trained_betas", check_trained_betas(self.trained_betas, self.kind, self.num_timesteps))

    @property
    def is_discrete(self) -> bool:
        return self.kind != "continuous_cosine"


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_t linear from beta_start to beta_end (Ho et al. 2020, sec. 4). Returns float64 [T]."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """beta_t = (linear from sqrt(beta_start) to sqrt(beta_end))^2, diffusers' "scaled_linear"
    (the latent-diffusion schedule, Rombach et al. 2022). Returns float64 [T]."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_alphas_cumprod(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """abar_t of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64 [T].

    f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), abar_t = f(t)/f(0), with the betas it implies
    clipped to max_beta (their sec. 3.2) so the last step is not singular. Index t here is the
    0-based step, abar of step t is f(t+1)/f(0).
    """
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)
    return np.cumprod(1.0 - betas)


def check_trained_betas(betas, kind: str, num_timesteps: int) -> tuple[float, ...]:
    """The betas of a "trained_betas" schedule as a tuple of floats: T = ``num_timesteps`` finite
    values in (0, 1) whose abar_{T-1} stays above 0 in float64; empty for every other kind.
    ValueError naming ``trained_betas`` otherwise."""
    if not isinstance(betas, (list, tuple)):
        raise ValueError(f"trained_betas must be a list of numbers, got {type(betas).__name__}")
    if kind != "trained_betas":
        if betas:
            raise ValueError(f"trained_betas apply to the trained_betas kind only, got kind {kind!r}")
        return ()
    if not 1 <= len(betas) <= MAX_TRAINED_BETAS or len(betas) != num_timesteps:
        raise ValueError(f"trained_betas must hold num_timesteps ({num_timesteps}) values, at most "
                         f"{MAX_TRAINED_BETAS}, got {len(betas)}")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 < b < 1
               for b in betas):
        raise ValueError("trained_betas must be finite numbers strictly between 0 and 1")
    out = tuple(float(b) for b in betas)
    if not alphas_cumprod_from_betas(np.asarray(out))[-1] > 0:
        raise ValueError("trained_betas leave no signal: abar_t reaches 0 in float64")
    return out


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
    """abar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, notation above eq. 4). float64 [T]."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def discrete_alphas_cumprod(config: ScheduleConfig) -> np.ndarray:
    """abar_t for t = 0..T-1 of a discrete schedule, float64 [T], strictly decreasing."""
    if config.kind == "linear":
        return alphas_cumprod_from_betas(linear_betas(config.num_timesteps, config.beta_start, config.beta_end))
    if config.kind == "scaled_linear":
        return alphas_cumprod_from_betas(scaled_linear_betas(config.num_timesteps, config.beta_start, config.beta_end))
    if config.kind == "cosine":
        return cosine_alphas_cumprod(config.num_timesteps, config.cosine_s)
    if config.kind == "trained_betas":  # the betas a model was trained with, given as they are
        return alphas_cumprod_from_betas(np.asarray(config.trained_betas, dtype=np.float64))
    raise ValueError(f"{config.kind} is not a discrete schedule")


def continuous_cosine_rates(t: np.ndarray | float, max_signal_rate: float = 0.95,
                            min_signal_rate: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise rates of the Keras DDIM example's cosine schedule, t in [0, 1].

    angle = acos(max_signal_rate) + t (acos(min_signal_rate) - acos(max_signal_rate)),
    signal_rate = cos(angle), noise_rate = sin(angle); so signal^2 + noise^2 = 1 (variance
    preserving) and t = 0 is the cleanest level the network was trained on.
    """
    t = np.asarray(t, dtype=np.float64)
    start, end = math.acos(max_signal_rate), math.acos(min_signal_rate)
    angle = start + t * (end - start)
    return np.cos(angle), np.sin(angle)


def signal_noise_rates(config: ScheduleConfig, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(alpha_t, sigma_t) at schedule time t: integer steps for discrete, [0, 1] for continuous."""
    if config.is_discrete:
        abar = discrete_alphas_cumprod(config)[np.asarray(t, dtype=np.int64)]
        return np.sqrt(abar), np.sqrt(1.0 - abar)
    return continuous_cosine_rates(t, config.max_signal_rate, config.min_signal_rate)


@dataclass(frozen=True)
class TimeGrid:
    """The levels a sampler walks through, from noisiest to clean.

    ``times[i]`` is the schedule time of step i (S entries). ``alphas_cumprod`` has S + 1 entries:
    abar at each step's time, then 1.0 for the clean end point x_0 (so the last step returns its
    predicted x0, as DDIM's final step does). ``ddim_targets`` [S] is the level each DDIM step
    goes to: by default the next level, ``alphas_cumprod[1:]``.
    """

    times: np.ndarray  # [S] schedule times, noisiest first
    alphas_cumprod: np.ndarray  # [S + 1] float64, increasing, last = 1.0
    ddim_targets: np.ndarray | None = None  # [S] float64 abar each DDIM step goes to; None: alphas_cumprod[1:]

    def __post_init__(self) -> None:
        if self.ddim_targets is None:
            object.__setattr__(self, "ddim_targets", np.asarray(self.alphas_cumprod[1:], dtype=np.float64))
        if not len(self.times) + 1 == len(self.alphas_cumprod) == len(self.ddim_targets) + 1:
            raise ValueError("a time grid needs S times, S + 1 levels and S DDIM targets")

    @property
    def num_steps(self) -> int:
        return len(self.times)

    def steps(self, start: int, stop: int | None = None) -> "TimeGrid":
        """The grid of steps start..stop-1 (to the end by default), each with its own target."""
        stop = self.num_steps if stop is None else stop
        return TimeGrid(self.times[start:stop], self.alphas_cumprod[start:stop + 1], self.ddim_targets[start:stop])


def time_fraction(config: ScheduleConfig, t: float) -> float:
    """Schedule time on one scale for every model: 1 the noisiest trained level, 0 clean. A
    continuous schedule's t already is; a discrete step t in 0..T-1 is (t + 1) / T (so T-1 -> 1)."""
    return (float(t) + 1.0) / config.num_timesteps if config.is_discrete else float(t)


def describe_time(config: ScheduleConfig, t: float) -> str:
    """The model's own time of ``t``, in words (a tooltip beside ``time_fraction``)."""
    if config.is_discrete:
        return f"This model's own time: step t = {int(t)} of its discrete schedule's 0 to {config.num_timesteps - 1}"
    return f"This model's own time: t = {float(t):.4g} on its continuous schedule's 0 to 1"


def max_sampling_steps(config: ScheduleConfig) -> int:
    """Largest step count a sampler may use: T (less a leading grid's steps_offset, which would
    push the last grid step past T-1) for discrete schedules, 1000 for continuous."""
    return config.num_timesteps - config.steps_offset if config.is_discrete else 1000


def time_grid(config: ScheduleConfig, num_steps: int) -> TimeGrid:
    """The sampling grid of ``num_steps`` steps.

    Discrete schedules use, by ``config.spacing`` (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Table 2; the names are diffusers' ``timestep_spacing``):

    - "trailing" (the default): t_i = round(T - i T / S) - 1 for i = 0..S-1, so the first step
      always starts at t = T-1 (the noisiest level trained), S = T gives every step T-1..0, and
      S = 1 gives the single step T-1 -> clean;
    - "leading": t_i = (S - 1 - i) floor(T / S) + steps_offset (DDPM's and DDIM's original grid);
    - "linspace": S evenly spaced steps from T-1 to 0, rounded (np.linspace(0, T - 1, S), reversed).

    Every step goes to the next level of the grid, the last to clean. A DDIM step goes to
    ``ddim_targets`` instead (``ddim_target_levels``), which differ where ``config`` says so.
    Continuous: t_i = 1 - i / S.
    """
    limit = max_sampling_steps(config)
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= limit:
        raise ValueError(f"number of sampling steps must be an integer from 1 to {limit}, got {num_steps!r}")
    if config.is_discrete:
        T = config.num_timesteps
        i = np.arange(num_steps)
        if config.spacing == "leading":
            times = (num_steps - 1 - i) * (T // num_steps) + config.steps_offset
        elif config.spacing == "linspace":
            times = np.round(np.linspace(0, T - 1, num_steps))[::-1]
        else:
            times = np.round(T - i * (T / num_steps)) - 1
        times = times.astype(np.int64)
        if times.max() > T - 1:
            raise ValueError(f"{num_steps} steps with steps_offset {config.steps_offset} go beyond the last "
                             f"trained step {T - 1}: choose fewer steps")
        table = discrete_alphas_cumprod(config)
        abar = table[times]
        return TimeGrid(times, np.concatenate([abar, [1.0]]), ddim_target_levels(config, table, times))
    times = 1.0 - np.arange(num_steps, dtype=np.float64) / num_steps
    signal, _ = continuous_cosine_rates(times, config.max_signal_rate, config.min_signal_rate)
    return TimeGrid(times=times, alphas_cumprod=np.concatenate([signal**2, [1.0]]))


def ddim_target_levels(config: ScheduleConfig, alphas_cumprod: np.ndarray, times: np.ndarray) -> np.ndarray:
    """abar of the level each DDIM step of a discrete grid ``times`` [S] goes to, float64 [S].

    ``ddim_target = "next"``: the next grid step's abar, and 1 (clean) after the last. ``"stride"``:
    the step t_prev = t - floor(T / S) (diffusers' ``DDIMScheduler.step``, "prev_timestep"), which is
    the next grid step only where the grid is evenly spaced by floor(T / S) (leading, and trailing
    when S divides T); a linspace grid visits round(k (T-1)/(S-1)) but each step still lands
    floor(T / S) lower. Where t_prev < 0 the step goes to the final level: 1 (clean, Song et al.
    2020 define alpha_0 := 1), or abar_0 with ``set_alpha_to_one = False`` (diffusers' option)."""
    final = 1.0 if config.set_alpha_to_one else float(alphas_cumprod[0])
    if config.ddim_target == "stride":
        prev = np.asarray(times, dtype=np.int64) - config.num_timesteps // len(times)
    else:
        prev = np.append(np.asarray(times, dtype=np.int64)[1:], -1)
    return np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], final).astype(np.float64)
