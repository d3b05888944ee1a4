"""Geometry: several seeds' trajectories projected to 2-D (one PCA fitted on every step of every
seed, for x_t and for predicted x0), coloured by step; and, per step, how much predicted x0
changes: where the image decides."""

import numpy as np
import streamlit as st

from diffusion_core.images import make_grid, png_bytes
from explorer_ui import plans, view_cache, view_charts, view_requests, widgets


def pick(chart_key: str, request: view_requests.GeometryRequest) -> None:
    """A clicked point of a path chart: remember its seed (the curve) and step; move the step slider there."""
    points = st.session_state[chart_key].selection.points
    if points:
        seed_index, step = points[0]["curve_number"], points[0].get("point_index", points[0].get("point_number"))
        st.session_state["geo_pick"] = (request, int(seed_index), int(step))
        st.session_state["geo_step"] = min(int(step), request.sampler.num_steps - 1)


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.model_inputs(entries, "geo", count=6, ladder=(20, 10, 5))
    sampler = widgets.sampler_inputs("geo", choice)
    seeds_text = st.text_input("Seeds", f"0-{max(1, choice.count0) - 1}", key="geo_seeds",
                               help=f"Up to {plans.MAX_SEEDS} seeds, e.g. 0-5 or 3, 17, 42.")
    request = widgets.valid("Trajectory geometry", lambda: view_requests.geometry(
        choice.ref, choice.model, plans.parse_seeds(seeds_text), sampler.config()))

with right, widgets.guard("Trajectory geometry"):
    if widgets.ready("geo_approved", request, [choice.model], request.evaluations):
        with widgets.running("geo_approved", request, request.evaluations, "Recording the trajectories") as job:
            geo = view_cache.geometry(request, job)
        a, b = st.columns(2)
        a.plotly_chart(view_charts.paths_chart(geo.x_t, geo.seeds, geo.explained_x_t, "x_t, PCA of every step",
                                               final="sample"), key="geo_x_t",
                       on_select=lambda: pick("geo_x_t", request), selection_mode="points")
        b.plotly_chart(view_charts.paths_chart(geo.pred_x0, geo.seeds, geo.explained_pred_x0,
                                               "predicted x0, PCA of every step"), key="geo_pred",
                       on_select=lambda: pick("geo_pred", request), selection_mode="points")
        picked = st.session_state.get("geo_pick")
        if picked is not None and picked[0] == request:
            _, i, step = picked
            a, b, _ = st.columns([1, 1, 2])
            widgets.show(geo.x_t_frames[i, step], f"seed {geo.seeds[i]}: " + (
                "the sample" if step == len(geo.times) else f"x_t at step {step}"), target=192, where=a)
            k = min(step, len(geo.times) - 1)
            widgets.show(geo.frames[i, k], f"predicted x0 at step {k}", target=192, where=b)
        else:
            st.caption("Click a point of a path to see its x_t and predicted x0.")
        st.plotly_chart(view_charts.change_chart(geo.x0_change, geo.seeds), key="geo_change")
        last = geo.frames.shape[1] - 1
        st.session_state["geo_step"] = min(st.session_state.get("geo_step", last), last)
        step = st.slider("Predicted x0 of every seed at step", 0, last, key="geo_step",
                         help="Hovering a path names its seed and step; clicking it shows its frames.")
        frames = make_grid(geo.frames[:, step], cols=min(8, len(geo.seeds)))
        widgets.show(frames, f"step {step} (t = {geo.times[step]:.3g}), seeds {', '.join(map(str, geo.seeds))}",
                     target=min(720, 128 * min(8, len(geo.seeds))))
        st.download_button("Download PNG", png_bytes(frames), key="geo_download", on_click="ignore",
                           mime="image/png", file_name=f"{choice.entry.name}_pred_x0_step{step}.png")
        st.caption(f"Largest mean change of predicted x0 at step {int(np.argmax(geo.x0_change.mean(0))) + 1} of "
                   f"{last + 1}.")
