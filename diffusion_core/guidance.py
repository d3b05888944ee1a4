"""Autoguidance: a main model guided by a smaller and/or less-trained model of the same data and
noise schedule (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself").

The guided denoiser is the one of classifier-free guidance, with the bad model ``D_0`` in the place
of the unconditional one:

    D_w(x; sigma) = D_0(x; sigma) + w (D_1(x; sigma) - D_0(x; sigma))  =  w D_1 + (1 - w) D_0

with ``D_1`` the main model, ``D_0`` the guide and ``D`` a prediction of x_0 (the paper's
denoiser). w = 1 is the main model alone, w = 0 the guide alone, w > 1 moves away from the guide.

Why combining x_0 (or eps) predictions is exact for every sampler here: at a fixed x_t and level
(alpha_t, sigma_t), eps = (x_t - alpha_t x_0) / sigma_t is an affine function of x_0, and an
affine function commutes with a combination whose weights sum to one (w and 1 - w). So combining
the two x_0 predictions and converting to eps gives the same eps as combining the two eps
predictions, and the combined pair satisfies x_t = alpha_t x0_w + sigma_t eps_w as each model's
pair does. Each model is first turned into (eps, x_0) by its own ``model.Denoiser`` (eps or v
prediction), so the two may predict different things. DDIM, DDPM and DPM-Solver++ then read the
guided (eps, x_0) exactly as they read one model's.

A guide must agree with the main model on everything that fixes what x_t means: the schedule
(kind and the parameters of that kind), the pixel normalisation, the resolution and the channels
(``mismatches``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .model import PixelNormalization
from .schedules import RATE_FIELDS, ScheduleConfig

if TYPE_CHECKING:
    from .checkpoint import LoadedModel
    from .config import ExperimentConfig
    from .samplers import Denoise

NO_GUIDANCE = 1.0  # w = 1: the main model alone
MAX_GUIDANCE = 10.0  # weights beyond this only amplify the difference of two models' errors
NORMALIZATION_TOLERANCE = 1e-6  # mean/std of the two models' pixel normalisations may differ by this



def check_weight(w: float) -> float:
    """The guidance weight as a float; ValueError unless 0 <= w <= MAX_GUIDANCE."""
    try:
        w = float(w)
    except (TypeError, ValueError):
        raise ValueError(f"guidance weight must be a number, got {w!r}") from None
    if math.isnan(w) or not 0.0 <= w <= MAX_GUIDANCE:
        raise ValueError(f"guidance weight must be between 0 and {MAX_GUIDANCE:g} (1: no guidance), got {w}")
    return w


def autoguidance(main: torch.Tensor, guide: torch.Tensor, w: float) -> torch.Tensor:
    """D_w = D_0 + w (D_1 - D_0) (Karras et al. 2024; ``main`` = D_1, ``guide`` = D_0), for two
    predictions [N x C x H x W] of x_0, or of eps at the same x_t and level (see the module
    docstring). w = 1 returns ``main`` itself and w = 0 ``guide`` itself, bit for bit."""
    if w == 1.0:
        return main
    if w == 0.0:
        return guide
    return guide + w * (main - guide)


class GuidedDenoiser:
    """``(x_t, signal_rate, noise_rate) -> (pred_eps, pred_x0)`` of the autoguided model: the
    samplers' denoiser signature, so every sampler takes it unchanged.

    Each of ``main`` and ``guide`` (denoisers of the samplers' signature, e.g. ``model.Denoiser``)
    gives (eps, x0) from its own prediction type; both are combined by ``autoguidance``. At w = 1
    only the main model runs and at w = 0 only the guide: the result is then that model's own.
    Clipping (``x0_range``) is the main model's, applied by the sampler after combining."""

    def __init__(self, main: Denoise, guide: Denoise, weight: float):
        self.main, self.guide, self.weight = main, guide, check_weight(weight)
        self.x0_range = getattr(main, "x0_range", None)

    @property
    def calls(self) -> int:
        """Network evaluations of both models."""
        return getattr(self.main, "calls", 0) + getattr(self.guide, "calls", 0)

    def __call__(self, x_t: torch.Tensor, signal: float, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        if w == 1.0:
            return self.main(x_t, signal, noise)
        if w == 0.0:
            return self.guide(x_t, signal, noise)
        eps_1, x0_1 = self.main(x_t, signal, noise)
        eps_0, x0_0 = self.guide(x_t, signal, noise)
        return autoguidance(eps_1, eps_0, w), autoguidance(x0_1, x0_0, w)


# ------------------------------------------------------------------------------------ compatibility
def _schedule_mismatches(main: ScheduleConfig, guide: ScheduleConfig) -> list[str]:
    if main.kind != guide.kind:
        return [f"schedule kind ({main.kind} against {guide.kind})"]
    return [f"schedule {f} ({str(getattr(main, f)):.60} against {str(getattr(guide, f)):.60})"
            for f in RATE_FIELDS[main.kind] if getattr(main, f) != getattr(guide, f)]


def mismatches(main: ExperimentConfig, main_norm: PixelNormalization,
               guide: ExperimentConfig, guide_norm: PixelNormalization) -> list[str]:
    """What keeps ``guide`` from guiding ``main``: each entry names one difference as
    "what (main's against guide's)"; empty when the guide fits. The prediction type, the
    network's kind and widths, the loss and the training length may differ."""
    found = _schedule_mismatches(main.schedule, guide.schedule)
    for f in ("image_size", "channels"):
        a, b = getattr(main.network, f), getattr(guide.network, f)
        if a != b:
            found.append(f"network {f} ({a} against {b})")
    if main.data.normalization != guide.data.normalization:
        found.append(f"data normalization ({main.data.normalization} against {guide.data.normalization})")
    else:
        for f in ("mean", "std"):
            a, b = getattr(main_norm, f), getattr(guide_norm, f)
            gap = max(abs(x - y) for x, y in zip(a, b))
            if gap > NORMALIZATION_TOLERANCE:
                found.append(f"pixel normalization {f} ({_fmt(a)} against {_fmt(b)}, up to {gap:.1e} apart): "
                             "not trained on the same images")
    return found


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6f}" for v in values) + ")"


def check_guide(main: LoadedModel, guide: LoadedModel) -> None:
    """ValueError naming every difference that keeps ``guide`` from guiding ``main``."""
    found = mismatches(main.experiment, main.normalization, guide.experiment, guide.normalization)
    if found:
        raise ValueError(f"{guide.name} cannot guide {main.name}: they differ in " + "; ".join(found))
    if main.device != guide.device:
        raise ValueError(f"{guide.name} is on {guide.device}, {main.name} on {main.device}: load both on one device")


def description_mismatches(main: dict[str, Any], guide: dict[str, Any]) -> list[str]:
    """``mismatches`` of two checkpoint descriptions (no weights read), for listing the guides
    that fit a model; an unreadable description is one mismatch."""
    from .checkpoint import CheckpointError, experiment_from_description

    try:
        exps = [experiment_from_description(d, "description") for d in (main, guide)]
        norms = [PixelNormalization(**d.get("normalization", {})) for d in (main, guide)]
    except (CheckpointError, TypeError, ValueError) as e:
        return [f"unreadable description ({str(e)[:120]})"]
    return mismatches(exps[0], norms[0], exps[1], norms[1])


@dataclass(frozen=True)
class Guidance:
    """A loaded guide and the weight w to sample with (``runtime.denoiser``, ``generate``).
    Built by ``guidance(main, guide, w)``, which checks that the guide fits."""

    guide: LoadedModel
    weight: float = NO_GUIDANCE

    @property
    def active(self) -> bool:
        """Whether sampling differs from the main model's (w != 1)."""
        return self.weight != NO_GUIDANCE


def guidance(main: LoadedModel, guide: LoadedModel | None, weight: float = NO_GUIDANCE) -> Guidance | None:
    """The checked ``Guidance`` of ``guide`` for ``main`` at weight w; None without a guide.
    ValueError for a weight out of bounds, a guidance weight without a guide, or a guide that
    does not fit (``check_guide``)."""
    weight = check_weight(weight)
    if guide is None:
        if weight != NO_GUIDANCE:
            raise ValueError(f"guidance weight {weight:g} needs a guide model (1 means no guidance)")
        return None
    check_guide(main, guide)
    return Guidance(guide, weight)
