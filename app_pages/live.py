"""Live: the denoising shown as it happens, step by step, with a stop button.

The images live in a fragment that the browser reruns every ``plans.LIVE_TICK_SECONDS`` while a
run goes on; each tick computes the next steps for about ``plans.LIVE_SLICE_SECONDS`` (at least one
step) and shows the newest one. Between ticks the script is idle, so the rest of the page and the
sidebar answer at once. The run itself (its step generator) is kept in the session between ticks.
When the visitor leaves the page or closes it, no tick comes and nothing is computed (a step under
way ends at its step boundary, ``compute.Job``); Stop, a new Start or changed settings end the
run, and the page keeps its last frames.

A click elsewhere reruns the whole page while a tick may still be in its slice: the tick ends at
its next display call, and the new run waits for it (a lock per session), so the tick's images
cannot replace the new run's at the same place in the page."""

import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Iterator

import streamlit as st
import torch

from diffusion_core import generate as G
from diffusion_core.images import make_grid, png_bytes
from diffusion_core.samplers import StepState
from explorer_ui import cache, compute, pictures, plans, widgets
from explorer_ui.requests import GridRequest

log = logging.getLogger("explorer_ui")


@dataclass
class Run:
    """The run in progress, kept in the session between ticks."""

    request: GridRequest
    steps: Iterator[StepState]  # the sampler's remaining steps, each under the device's lock
    seconds: float = 0.0  # compute time so far (ticks only, not the pauses between them)


entries = widgets.usable_or_stop()
left, right = st.columns([1, 3])
with left:
    choice = widgets.grid_inputs(entries, "live", "Live sampling")
    entry, model, request = choice.entry, choice.model, choice.request
    start, stop = st.columns(2)
    started = start.button("Start", key="live_start", type="primary")
    stop.button("Stop", key="live_stop", on_click=lambda: st.session_state.update(live_stop_requested=True))


def frame(state: StepState, cols: int, seconds: float) -> dict:
    """What one step shows: predicted x0 and x_t grids (uint8, upscaled), captions, the step."""
    k, n = state.index + 1, state.num_steps
    return {"pred": widgets.upscale(make_grid(model.normalization.to_pixels(state.pred_x0), cols), 420),
            "x_t": widgets.upscale(make_grid(G.latent_to_pixels(model, state.x_next), cols), 420),
            "pred_caption": f"predicted x0 at step {k}",
            "x_t_caption": "finished samples" if k == n else f"x_t after step {k}",
            "detail": f"({entry.label}, {request.sampler.name}, {seconds:.1f} s on {request.model.device})",
            "step": k, "steps": n}


def status(shown: dict, running: bool) -> str:
    k, n = shown["step"], shown["steps"]
    where = "Done:" if k == n else "Running:" if running else "Stopped at"
    return f"{where} step {k} of {n} {shown['detail']}."


def session_lock() -> threading.Lock:
    """One lock per session around everything that touches its run (a tick and a full run of the
    page may overlap while the older one unwinds)."""
    return st.session_state.setdefault("live_page_lock", threading.Lock())


def begin() -> None:
    """Start a run of this page's request (Start, or the first visit), within the budget."""
    compute.check_budget(widgets.cost([model], request.evaluations))
    job = compute.Job(max(1, round(request.evaluations)), alive=widgets._visitor_present())
    st.session_state["live_run"] = Run(request, cache.live_steps(request, job))


def end(run: Run | None) -> None:
    """Drop the run (its generator is closed: no further step is computed)."""
    st.session_state.pop("live_run", None)
    if run is not None:
        run.steps.close()


def advance(run: Run) -> dict | None:
    """Compute the run's next steps for about ``plans.LIVE_SLICE_SECONDS``; the newest one's frame
    (None when the sampler has no step left)."""
    state, t0 = None, time.perf_counter()
    while state is None or time.perf_counter() - t0 < plans.LIVE_SLICE_SECONDS:
        newest = next(run.steps, None)
        if newest is None:
            break
        state = newest
        if state.index + 1 == state.num_steps:
            break
    run.seconds += time.perf_counter() - t0
    return None if state is None else frame(state, math.ceil(math.sqrt(len(run.request.seeds))), run.seconds)


def advance_or_error(run: Run) -> dict | None:
    """``advance``; an error ends the run and is kept in the session to be shown until the next
    Start (the page's full run that stops the ticks would otherwise wipe an error box)."""
    try:
        return advance(run)
    except compute.Stopped:  # the visitor left during the slice
        pass
    except ValueError as e:
        st.session_state["live_error"] = f"Live sampling: {e}"
    except (MemoryError, torch.OutOfMemoryError):
        log.warning("Live sampling ran out of memory")
        st.session_state["live_error"] = "Live sampling ran out of memory: choose fewer images or a smaller model."
    except Exception as e:  # noqa: BLE001  (the UI must survive; the log keeps the details)
        log.error("Live sampling failed:\n%s", traceback.format_exc())
        st.session_state["live_error"] = (f"Live sampling failed unexpectedly ({type(e).__name__}). "
                                          "The details are in the server log.")
    end(run)
    return None


def show(ticking: bool) -> None:
    """The fragment: advance the session's run by one slice and show its newest frame, or show the
    last frames kept. ``ticking``: whether the browser reruns it (``plans.LIVE_TICK_SECONDS``)."""
    progress = st.empty()
    pred_col, xt_col = st.columns(2)
    pred_slot, xt_slot = pred_col.empty(), xt_col.empty()
    caption = st.empty()
    lock = session_lock()
    if not lock.acquire(timeout=60):
        st.warning("The previous live step is still finishing; press Start again in a moment.")
        return
    try:
        run, shown = st.session_state.get("live_run"), None
        if run is not None:
            shown = advance_or_error(run)
            if shown is None or shown["step"] == shown["steps"]:
                end(run)  # done, stopped or failed: the ticks stop with the page's next run
                run = None
            if shown is not None:
                st.session_state["live_last"] = shown
        if "live_error" in st.session_state:
            st.error(st.session_state["live_error"])
        last = st.session_state.get("live_last")
        if shown is not None:
            pred_slot.image(png_bytes(shown["pred"]), caption=shown["pred_caption"], output_format="PNG")
            xt_slot.image(png_bytes(shown["x_t"]), caption=shown["x_t_caption"], output_format="PNG")
            progress.progress(shown["step"] / shown["steps"], text=f"step {shown['step']} of {shown['steps']}")
            caption.caption(status(shown, run is not None))
        elif last is not None:
            # Kept frames are encoded with a note: an interrupted tick's clean-up may delete its media
            # files while this run starts, and the same bytes would get the same URL, which the
            # browser would not fetch again.
            pred_slot.image(pictures.png_with_note(last["pred"], "kept"), caption=last["pred_caption"],
                            output_format="PNG")
            xt_slot.image(pictures.png_with_note(last["x_t"], "kept"), caption=last["x_t_caption"],
                          output_format="PNG")
            caption.caption(status(last, False))
        else:
            caption.caption("Press Start to watch the sampler work.")
    finally:
        lock.release()
    if ticking and run is None:
        st.rerun()  # a full run of the page, which sets no timer


# Start, Stop, the first visit and changed settings act here, in the page's full run; the fragment
# only advances the run that is in the session.
with right:
    if not session_lock().acquire(timeout=60):
        st.warning("The previous live step is still finishing; press Start again in a moment.")
        st.stop()
    try:
        first_visit = not st.session_state.get("live_visited")
        st.session_state["live_visited"] = True
        current: Run | None = st.session_state.get("live_run")
        if st.session_state.get("live_stop_requested") or (current is not None and current.request != request):
            end(current)
        if started or first_visit:
            end(st.session_state.get("live_run"))
            st.session_state["live_stop_requested"] = False
            st.session_state.pop("live_error", None)
            with widgets.guard("Live sampling"):
                begin()
    finally:
        session_lock().release()
    ticking = "live_run" in st.session_state
    st.fragment(show, run_every=plans.LIVE_TICK_SECONDS if ticking else None)(ticking)
