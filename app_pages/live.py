"""Live: the denoising shown as it happens, step by step, with a stop button.

The images live in a fragment that the browser reruns every ``plans.LIVE_TICK_SECONDS`` while a
run goes on. Each tick first draws the newest frame, then computes the next steps for about
``plans.LIVE_SLICE_SECONDS`` (at least one step); the run itself (its step generator) and its
newest frame are kept in the session between ticks. The drawing comes first because a tick lasts
longer than the tick interval, so the browser's next request is already waiting when a tick ends,
and Streamlit then starts the fragment again at once, dropping whatever the ending run drew but
had not yet sent (``AppSession._clear_queue``): drawn before the slice, a frame is sent while the
slice computes. Start computes the first slice, so the page shows a frame at once.

When the visitor leaves the page or closes it, no tick comes and nothing is computed (a step under
way ends at its step boundary, ``compute.Job``); Stop, a new Start or changed settings end the
run, and the page keeps its newest frame. A click elsewhere reruns the whole page, which waits for
a tick still in its slice (a lock per session), so the two never draw over each other."""

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
from diffusion_core.images import make_grid
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
    """Start a run of this page's request (Start, or the first visit), within the budget, and
    compute its first slice."""
    compute.check_budget(widgets.cost([model], request.evaluations))
    job = compute.Job(max(1, round(request.evaluations)), alive=widgets._visitor_present())
    st.session_state.pop("live_last", None)
    st.session_state["live_run"] = run = Run(request, cache.live_steps(request, job))
    step(run)


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
    """``advance``, or None after an error (kept in the session to be shown until the next Start:
    the page's full run that stops the ticks would otherwise wipe an error box) or a leave."""
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
    return None


def step(run: Run) -> None:
    """Advance the run by one slice and keep its newest frame; end the run when it is done,
    stopped or failed."""
    shown = advance_or_error(run)
    if shown is not None:
        st.session_state["live_last"] = shown
    if shown is None or shown["step"] == shown["steps"]:
        end(run)


def draw(shown: dict | None, running: bool) -> None:
    """The newest frame (``shown``: None before the first), with a progress bar while running.
    Each drawing is a new PNG (a note numbers it): a picture drawn again must not get the URL
    of one whose media file the previous run's clean-up may be deleting."""
    progress = st.empty()
    pred_col, xt_col = st.columns(2)
    caption = st.empty()
    if "live_error" in st.session_state:
        st.error(st.session_state["live_error"])
    if shown is None:
        caption.caption("Press Start to watch the sampler work.")
        return
    note = f"frame {st.session_state.setdefault('live_draws', 0)}"
    st.session_state["live_draws"] += 1
    if running:
        progress.progress(shown["step"] / shown["steps"], text=f"step {shown['step']} of {shown['steps']}")
    pred_col.image(pictures.png_with_note(shown["pred"], note), caption=shown["pred_caption"], output_format="PNG")
    xt_col.image(pictures.png_with_note(shown["x_t"], note), caption=shown["x_t_caption"], output_format="PNG")
    caption.caption(status(shown, running))


def show(ticking: bool) -> None:
    """The fragment: draw the newest frame, then advance the session's run by one slice (its frame
    is drawn by the next tick, or, once the run has ended, by the page's full run).
    ``ticking``: whether the browser reruns it (``plans.LIVE_TICK_SECONDS``)."""
    lock = session_lock()
    if not lock.acquire(timeout=60):
        st.warning("The previous live step is still finishing; press Start again in a moment.")
        return
    try:
        run = st.session_state.get("live_run")
        draw(st.session_state.get("live_last"), run is not None)
        if run is not None:
            step(run)
        running = "live_run" in st.session_state
    finally:
        lock.release()
    if ticking and not running:
        st.rerun()  # a full run of the page, which draws the last frame and sets no timer


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
