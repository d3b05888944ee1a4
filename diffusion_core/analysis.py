"""Measurements of how a model samples and inverts: the geometry of several seeds' trajectories
(a PCA of x_t and of predicted x0, fitted on every step of every seed) and the quality of DDIM
inversion by step count (the DDIM paper's Table 2: Song et al. 2020, sec. 5.4). No streamlit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .checkpoint import LoadedModel
from .generate import Drive, driven, invert, latent_to_pixels, step_states
from .samplers import SamplerConfig


# ------------------------------------------------------------------------------------------- PCA
@dataclass(frozen=True)
class PCA:
    """A principal-component basis: project x as (x - mean) @ components.T."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [K x D], orthonormal rows, by decreasing variance
    explained: np.ndarray  # [K]: share of the total variance along each component

    def project(self, points: np.ndarray) -> np.ndarray:
        """[M x D] -> [M x K]."""
        return (np.asarray(points, np.float64) - self.mean) @ self.components.T


def fit_pca(points: np.ndarray, k: int = 2) -> PCA:
    """PCA of points [M x D] (Pearson 1901) by the SVD of the centred data, in float64: the
    components are the top right-singular vectors, each signed so that its largest loading is
    positive (the same data give the same picture on every machine)."""
    x = np.asarray(points, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs at least two points [M x D], got shape {x.shape}")
    k = min(k, x.shape[0], x.shape[1])
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    total = float((s ** 2).sum())
    explained = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return PCA(mean, comps, explained)


# --------------------------------------------------------------------------- trajectory geometry
@dataclass(frozen=True)
class Geometry:
    """Several seeds' trajectories, projected to 2-D, with the step-to-step change of predicted x0."""

    seeds: tuple[int, ...]
    times: np.ndarray  # [S] schedule time of each step
    x_t: np.ndarray  # [N x S+1 x 2]: the input of every step, then the sample
    pred_x0: np.ndarray  # [N x S x 2]: the predicted x0 of every step
    x0_change: np.ndarray  # [N x S-1]: RMS change of predicted x0 from step i to step i+1 (model units)
    explained_x_t: np.ndarray  # [2] variance shares of the x_t projection
    explained_pred_x0: np.ndarray  # [2]
    frames: np.ndarray  # uint8 [N x S x H x W x 3]: predicted x0 of every step (for the page's step viewer)
    x_t_frames: np.ndarray  # uint8 [N x S+1 x H x W x 3]: x_t shown as pixels, then the sample


def trajectory_geometry(model: LoadedModel, seeds: Sequence[int], config: SamplerConfig,
                        drive: Drive | None = None) -> Geometry:
    """Sample ``seeds`` with ``config`` keeping every step (through ``drive``); fit one PCA on all
    x_t (every step of every seed, the samples included) and one on all predicted x0, and project
    each seed's path."""
    if len(seeds) < 1:
        raise ValueError("give at least one seed")
    xs, x0s, frames, x_t_frames, times, last = [], [], [], [], [], None
    for state in driven(step_states(model, list(seeds), config, autocast=None), drive):
        xs.append(state.x_t.float().cpu().flatten(1).numpy())  # [N x D]
        x0s.append(state.pred_x0.float().cpu().flatten(1).numpy())
        frames.append(model.normalization.to_pixels(state.pred_x0))
        x_t_frames.append(latent_to_pixels(model, state.x_t))
        times.append(state.t)
        last = state
    xs.append(last.x_next.float().cpu().flatten(1).numpy())
    x_t_frames.append(model.normalization.to_pixels(last.x_next))
    x_t = np.stack(xs, 1).astype(np.float64)  # [N x S+1 x D]
    pred = np.stack(x0s, 1).astype(np.float64)  # [N x S x D]
    n, s1, d = x_t.shape
    pca_x, pca_p = fit_pca(x_t.reshape(-1, d)), fit_pca(pred.reshape(-1, d))
    change = np.sqrt(((pred[:, 1:] - pred[:, :-1]) ** 2).mean(-1))  # [N x S-1]
    return Geometry(tuple(int(s) for s in seeds), np.array(times), pca_x.project(x_t.reshape(-1, d)).reshape(n, s1, -1),
                    pca_p.project(pred.reshape(-1, d)).reshape(n, s1 - 1, -1), change, pca_x.explained,
                    pca_p.explained, np.stack(frames, 1), np.stack(x_t_frames, 1))


# ------------------------------------------------------------------------------ inversion quality
@dataclass(frozen=True)
class InversionRow:
    """DDIM inversion and reconstruction of the images at one step count and refinement."""

    steps: int
    refinement: int  # fixed-point iterations per inversion step (0: the plain first-order inversion)
    mse: float  # mean squared error per dimension of the reconstruction, pixels in [0, 1]
    psnr: float  # 10 log10(1 / mse), dB (120 for an exact round trip)
    latent_std: float  # standard deviation of the inverted noise (1 for a standard normal)
    evaluations: int  # network evaluations per image
    seconds: float


def inversion_evaluations(steps: int, refinement: int) -> int:
    """Network evaluations per image of one inversion and its reconstruction."""
    return steps * (1 + refinement) + steps


def inversion_quality(model: LoadedModel, images: np.ndarray, step_counts: Sequence[int],
                      refinements: Sequence[int] = (0,), drive: Drive | None = None
                      ) -> tuple[list[InversionRow], np.ndarray]:
    """For each step count and refinement: DDIM-invert uint8 images [N x S x S x 3] and decode the
    inverted noise with DDIM (eta 0, the same steps), the round trip of the DDIM paper's Table 2;
    every step (2 x steps of N images a row: ``generate.invert``) through ``drive``.
    Returns the rows (step counts ascending, then refinements) and the reconstructions, uint8
    [rows x N x S x S x 3]."""
    if not step_counts:
        raise ValueError("choose at least one step count")
    rows, recons = [], []
    target = images.astype(np.float64) / 255.0
    for steps in sorted(set(int(s) for s in step_counts)):
        for refinement in sorted(set(int(r) for r in refinements)):
            start = time.perf_counter()
            noise, recon = invert(model, images, steps, refinement, drive)
            seconds = time.perf_counter() - start
            mse = float(((recon.astype(np.float64) / 255.0 - target) ** 2).mean())
            rows.append(InversionRow(steps, refinement, mse, float(10 * np.log10(1.0 / max(mse, 1e-12))),
                                     float(noise.double().std()), inversion_evaluations(steps, refinement), seconds))
            recons.append(recon)
    return rows, np.stack(recons)
