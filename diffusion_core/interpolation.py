"""Interpolation between starting-noise tensors (latents).

High-dimensional Gaussian noise lies near a sphere of radius sqrt(d); the straight line between
two such points passes well inside it (at the midpoint the norm shrinks by about 1/sqrt(2)), where
the model never saw inputs. Spherical interpolation (Shoemake 1985; used for DDIM latents by Song
et al. 2020, sec. 5.3) keeps the norm, and so the noise statistics, along the whole path.
"""

from __future__ import annotations

from typing import Literal

import torch

Method = Literal["slerp", "lerp"]


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t) z0 + t z1."""
    return (1.0 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """sin((1 - t) theta) / sin(theta) z0 + sin(t theta) / sin(theta) z1, with theta the angle
    between z0 and z1 (per leading index when the tensors are batched [N x ...])."""
    flat0, flat1 = z0.reshape(z0.shape[0], -1).double(), z1.reshape(z1.shape[0], -1).double()
    cos = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1)).clamp_min(eps)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-6  # (anti)parallel: the arc is undefined, fall back to the line
    w0 = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * theta) / torch.where(parallel, 1.0, sin))
    w1 = torch.where(parallel, torch.full_like(theta, t), torch.sin(t * theta) / torch.where(parallel, 1.0, sin))
    shape = (-1,) + (1,) * (z0.ndim - 1)
    return (w0.view(shape) * z0.double() + w1.view(shape) * z1.double()).to(z0.dtype)


def interpolate(keys: torch.Tensor, frames: int, method: Method = "slerp") -> torch.Tensor:
    """Path through K key latents [K x C x H x W] in ``frames`` evenly spaced frames (first and
    last frames are the first and last keys; K - 1 segments share the frames by arc position).
    Returns [frames x C x H x W]."""
    if keys.ndim != 4 or keys.shape[0] < 2:
        raise ValueError(f"need at least two key latents [K x C x H x W], got shape {tuple(keys.shape)}")
    if not isinstance(frames, int) or frames < 2 or frames > 1000:
        raise ValueError(f"frames must be an integer from 2 to 1000, got {frames!r}")
    if method not in ("slerp", "lerp"):
        raise ValueError(f"method must be slerp or lerp, got {method!r}")
    fn = slerp if method == "slerp" else lerp
    segments = keys.shape[0] - 1
    out = []
    for f in range(frames):
        pos = f / (frames - 1) * segments  # position along the chain of keys
        seg = min(int(pos), segments - 1)
        t = pos - seg
        out.append(fn(keys[seg:seg + 1], keys[seg + 1:seg + 2], t)[0])
    return torch.stack(out)
