"""Plotly figures built from plain data on every run (figures are mutable: never cached)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

SEED_FID_NOTE = ("Seed FIDs are the numbers reported with the original experiments, measured with a "
                 "different, non-standard protocol: compare them with each other, not with this repo's FID.")


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 320) -> go.Figure:
    """Title, axis titles and a legend above the plot; the margins grow to fit the tick labels
    (``automargin``), so long experiment names are never cut off."""
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height,
                      margin=dict(l=10, r=10, t=70, b=10),
                      legend=dict(orientation="h", x=0, y=1.02, xanchor="left", yanchor="bottom"))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def fid_chart(rows: Sequence[dict[str, Any]]) -> go.Figure | None:
    """Horizontal bars of FID per experiment (names on the vertical axis, read in full, first row
    on top): this repo's FID and, apart, the seed's reported FID."""
    def finite(v):
        return v is not None and not (isinstance(v, float) and math.isnan(v))

    names = [r["name"] for r in rows]
    ours = [r.get("FID") if finite(r.get("FID")) else None for r in rows]
    seed = [r.get("seed FID (reported)") if finite(r.get("seed FID (reported)")) else None for r in rows]
    if not any(v is not None for v in ours + seed):
        return None
    fig = go.Figure()
    if any(v is not None for v in ours):
        fig.add_bar(name="FID (this repo)", y=names, x=ours, orientation="h")
    if any(v is not None for v in seed):
        fig.add_bar(name="seed FID (reported, not comparable)", y=names, x=seed, orientation="h", opacity=0.45)
    fig.update_layout(barmode="group")
    fig.update_yaxes(autorange="reversed", type="category")
    return _layout(fig, "FID per experiment (lower is better)", "FID", "", height=120 + 34 * len(names))


def loss_chart(logs: dict[str, dict[str, list[float]]]) -> go.Figure | None:
    """Training loss against epoch (or step) for every checkpoint that has a log."""
    fig = go.Figure()
    x_title = "epoch"
    for name, cols in logs.items():
        if not cols["loss"]:
            continue
        x = cols["epoch"]
        if all(math.isnan(v) for v in x):
            x, x_title = cols["step"], "step"
        fig.add_scatter(name=name, x=x, y=cols["loss"], mode="lines")
    if not fig.data:
        return None
    fig.update_yaxes(type="log")
    return _layout(fig, "Training loss", x_title, "loss (log scale)")


def rates_chart(signal: np.ndarray, noise: np.ndarray, current: int) -> go.Figure:
    """Signal rate alpha_t and noise rate sigma_t of each sampling step, the current one marked."""
    steps = np.arange(len(signal))
    fig = go.Figure()
    fig.add_scatter(name="signal rate (alpha_t)", x=steps, y=signal, mode="lines+markers", marker=dict(size=4))
    fig.add_scatter(name="noise rate (sigma_t)", x=steps, y=noise, mode="lines+markers", marker=dict(size=4))
    current = min(max(current, 0), len(signal) - 1)
    fig.add_vline(x=current, line_dash="dash", line_color="gray")
    fig.add_scatter(name=f"step {current}", x=[current, current], y=[signal[current], noise[current]],
                    mode="markers", marker=dict(size=11, color="black", symbol="circle-open"), showlegend=False)
    fig.update_yaxes(range=[0, 1.05])
    return _layout(fig, "Rates over the sampling steps", "step", "rate", height=300)


def noise_loss_chart(columns: dict[str, Any]) -> go.Figure:
    """Training loss by noise level over training (``timeline.noise_loss``): one line per bin of
    the noise variance sigma^2 = 1 - abar, low noise (fine detail) to pure noise (global layout)."""
    fig = go.Figure()
    edges = columns["edges"]
    for b, means in enumerate(columns["means"]):
        fig.add_scatter(name=f"σ² {edges[b]:.1f}-{edges[b + 1]:.1f}", x=columns["x"], y=means,
                        mode="lines", connectgaps=False)
    fig.update_yaxes(type="log")
    return _layout(fig, "Training loss by noise level (noise variance σ² = 1 - ᾱ)", columns["x_title"],
                   "loss (log scale)")


def fid_over_training_chart(series: dict[str, list[tuple[float, float, int]]]) -> go.Figure | None:
    """FID of a run's snapshots against epochs completed, one line per evaluation setting."""
    if not series:
        return None
    fig = go.Figure()
    for label, points in series.items():
        fig.add_scatter(name=label, x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers")
    return _layout(fig, "FID over training (lower is better)", "epochs completed", "FID")
