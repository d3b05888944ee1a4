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
