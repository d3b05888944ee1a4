"""Live: the denoising shown as it happens, step by step, with a stop button.

A click on Stop starts a new run of this script while the old one is still in its loop; the old
run ends at its next display call (or at the on-click flag). The new run waits for that (a lock
per session), so the old run's last images cannot replace the new run's at the same place in the
page; then it shows the last frames, kept in the session, and the page stays usable."""

import math
import threading
import time

import streamlit as st

from diffusion_core import generate as G
from diffusion_core.images import make_grid, png_bytes
from diffusion_core.samplers import StepState
from explorer_ui import cache, compute, pictures, widgets

entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.grid_inputs(entries, "live", "Live sampling")
    entry, model, request = choice.entry, choice.model, choice.request
    start, stop = st.columns(2)
    started = start.button("Start", key="live_start", type="primary")
    stop.button("Stop", key="live_stop", on_click=lambda: st.session_state.update(live_stop_requested=True))


def frame(state: StepState, cols: int, seconds: float) -> dict:
    """What one step shows: predicted x0 and x_t grids (uint8, upscaled), captions, status."""
    k, n = state.index + 1, state.num_steps
    return {"pred": widgets.upscale(make_grid(model.normalization.to_pixels(state.pred_x0), cols), 420),
            "x_t": widgets.upscale(make_grid(G.latent_to_pixels(model, state.x_next), cols), 420),
            "pred_caption": f"predicted x0 at step {k}",
            "x_t_caption": "finished samples" if k == n else f"x_t after step {k}",
            "status": f"{'Done:' if k == n else 'Stopped at'} step {k} of {n} "
                      f"({entry.label}, {request.sampler.name}, {seconds:.1f} s on {request.model.device})."}


def show_or_run() -> None:
    progress = st.empty()
    pred_col, xt_col = st.columns(2)
    pred_slot, xt_slot = pred_col.empty(), xt_col.empty()
    status = st.empty()
    first_visit = not st.session_state.get("live_visited")
    st.session_state["live_visited"] = True
    last = st.session_state.get("live_last")
    if last is not None:
        # The previous run's last frames, encoded with a note: an interrupted run's clean-up may
        # delete its media files while this run starts, and the same bytes would get the same URL,
        # which the browser would not fetch again.
        pred_slot.image(pictures.png_with_note(last["pred"], "kept"), caption=last["pred_caption"],
                        output_format="PNG")
        xt_slot.image(pictures.png_with_note(last["x_t"], "kept"), caption=last["x_t_caption"],
                      output_format="PNG")
        status.caption(last["status"])
    elif not (started or first_visit):
        status.caption("Press Start to watch the sampler work.")
    if not (started or first_visit):
        return
    st.session_state["live_stop_requested"] = False
    with widgets.guard("Live sampling"):
        compute.check_budget(widgets.cost([model], request.evaluations))
        cols, t0 = math.ceil(math.sqrt(len(request.seeds))), time.perf_counter()
        for state in cache.live_steps(request):
            if st.session_state.get("live_stop_requested"):
                break
            shown = st.session_state["live_last"] = frame(state, cols, time.perf_counter() - t0)
            pred_slot.image(png_bytes(shown["pred"]), caption=shown["pred_caption"], output_format="PNG")
            xt_slot.image(png_bytes(shown["x_t"]), caption=shown["x_t_caption"], output_format="PNG")
            done = state.index + 1
            progress.progress(done / state.num_steps, text=f"step {done} of {state.num_steps}")
        status.caption(st.session_state["live_last"]["status"] if "live_last" in st.session_state else "")


with right:
    session_lock = st.session_state.setdefault("live_lock", threading.Lock())
    if not session_lock.acquire(timeout=60):
        st.warning("The previous live run is still finishing its step; press Start again in a moment.")
        st.stop()
    try:
        show_or_run()
    finally:
        session_lock.release()
