"""Plotly figures of the view pages, built from plain data on every run (never cached)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go


def branch_distance_chart(distances: np.ndarray, names: Sequence[str], k: int) -> go.Figure:
    """Per step, the RMS distance of each branch's predicted x0 from the original's [B x S]; the
    branch step marked."""
    steps = np.arange(distances.shape[1])
    fig = go.Figure()
    for name, row in zip(names, distances):
        fig.add_scatter(name=name, x=steps, y=row, mode="lines+markers", marker=dict(size=4))
    fig.add_vline(x=k, line_dash="dash", line_color="gray", annotation_text=f"branch at step {k}")
    fig.update_layout(title="Where the branches diverge: distance of predicted x0 from the original's",
                      xaxis_title="step", yaxis_title="RMS distance (model units)", height=320,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def paths_chart(paths: np.ndarray, seeds: Sequence[int], explained: np.ndarray, title: str,
                final: str | None = None) -> go.Figure:
    """One 2-D path per seed [N x P x 2], its points coloured by step (the colour bar), hover
    naming seed and step (``final`` names a last point that is not a step, e.g. the sample)."""
    fig = go.Figure()
    n, p, _ = paths.shape
    steps = np.arange(p)
    names = [f"step {i}" for i in steps]
    if final is not None:
        names[-1] = final
    for i, (seed, path) in enumerate(zip(seeds, paths)):
        fig.add_scatter(x=path[:, 0], y=path[:, 1], mode="lines+markers", name=f"seed {seed}",
                        line=dict(width=1, color="lightgray"), text=names,
                        marker=dict(size=6, color=steps, colorscale="Viridis", showscale=i == 0,
                                    colorbar=dict(title="step", thickness=10)),
                        hovertemplate=f"seed {seed}, " + "%{text}<extra></extra>")
    return _layout(fig, title, f"PC 1 ({100 * explained[0]:.0f}% of the variance)",
                   f"PC 2 ({100 * explained[1]:.0f}%)" if len(explained) > 1 else "PC 2")


def change_chart(change: np.ndarray, seeds: Sequence[int]) -> go.Figure:
    """Per step, the RMS change of predicted x0 from the step before [N x S-1]: where the image decides."""
    steps = np.arange(1, change.shape[1] + 1)
    fig = go.Figure()
    for seed, row in zip(seeds, change):
        fig.add_scatter(x=steps, y=row, mode="lines", name=f"seed {seed}", line=dict(width=1), opacity=0.6)
    fig.add_scatter(x=steps, y=change.mean(0), mode="lines+markers", name="mean", line=dict(width=3, color="black"))
    return _layout(fig, "How much predicted x0 changes at each step", "step",
                   "RMS change from the step before (model units)", height=300)


def inversion_chart(steps: Sequence[int], mse: Sequence[float], refinement: Sequence[int]) -> go.Figure:
    """Reconstruction error against inversion steps, one line per refinement (log scale)."""
    fig = go.Figure()
    for r in sorted(set(refinement)):
        rows = [(s, e) for s, e, rr in zip(steps, mse, refinement) if rr == r]
        fig.add_scatter(x=[s for s, _ in rows], y=[max(e, 1e-12) for _, e in rows], mode="lines+markers",
                        name="plain DDIM inversion" if r == 0 else f"{r} fixed-point iterations per step")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return _layout(fig, "Reconstruction error of DDIM inversion", "steps", "MSE per dimension (pixels in [0, 1])",
                   height=320)
