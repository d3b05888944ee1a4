"""Widgets and display helpers shared by the pages: the sidebar, the checkpoint picker, the
error guard every action runs under, the inputs that end in a validated request (``requests``),
image display, the "this will take a while" gate and the progress bar with its Stop button.

Widgets whose default depends on the model (steps, image count) get it through ``preset``, so the
box always shows the value that runs.

Settings chosen in the sidebar live under plain session-state keys (``extra_folder``,
``device``), copied from the widgets on change, so every page of a session sees them.
"""

from __future__ import annotations

import contextvars
import logging
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import streamlit as st
import torch

from diffusion_core.checkpoint import LoadedModel
from diffusion_core.data import IMAGE_EXTENSIONS
from diffusion_core.diffusers_import import ddpm_variance
from diffusion_core.images import png_bytes
from diffusion_core.samplers import DEFAULT_SAMPLER, REGISTRY, SamplerConfig, step_limit
from diffusion_core.training import resolve_device

from . import cache, catalog, compute, plans, requests, settings, shared

T = TypeVar("T")

log = logging.getLogger("explorer_ui")

FOLDER_KEY, DEVICE_KEY = "extra_folder", "device"


# ------------------------------------------------------------------------------------------ errors
@contextmanager
def guard(action: str) -> Iterator[None]:
    """Run a page action; show what went wrong as an error box instead of a stack trace.
    ``ValueError`` (``CheckpointError`` included) is the core's way to say "bad input"; anything
    else is a bug or the machine: a short message here, the traceback in the server log."""
    try:
        yield
    except ValueError as e:
        st.error(f"{action}: {e}")
    except (MemoryError, torch.OutOfMemoryError):
        log.warning("%s ran out of memory", action)
        st.error(f"{action} ran out of memory: choose fewer images, fewer frames or a smaller model.")
    except Exception as e:  # noqa: BLE001  (the UI must survive; the log keeps the details)
        log.error("%s failed:\n%s", action, traceback.format_exc())
        st.error(f"{action} failed unexpectedly ({type(e).__name__}). The details are in the server log.")


@contextmanager
def section(action: str) -> Iterator[None]:
    """A part of a page that runs an action (``guard``'s error boxes), drawn as one element of the
    page: what it draws while it runs (a progress bar where its button was) cannot take the place
    of the next part's elements, which stay on screen from the previous run until the script
    reaches them. Pages with several actions one below the other use it for each."""
    with st.container(), guard(action):
        yield


def valid(action: str, build: Callable[[], T]) -> T:
    """``build()`` a request from a page's inputs; if the inputs are wrong, show why (as ``guard``
    does) and end the page run."""
    with guard(action):
        return build()
    st.stop()
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------- sidebar
def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


def current_device() -> str:
    device = st.session_state.get(DEVICE_KEY) or resolve_device("auto")
    return device if device in devices() else "cpu"


def _keep(widget_key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state[widget_key]


def folder_input_allowed() -> bool:
    """A shared server can forbid visitors to browse its file system for checkpoints:
    DIFFUSION_EXPLORER_LOCK_FOLDERS=1 hides the extra-folder input."""
    return not settings.folders_locked()  # any value but an "off" word locks


def sidebar() -> None:
    """The settings every page shares: an extra checkpoint folder and the device."""
    with st.sidebar:
        if folder_input_allowed():
            st.text_input("Also look in folder", value=st.session_state.get(FOLDER_KEY, ""), key="_extra_folder",
                          on_change=_keep, args=("_extra_folder", FOLDER_KEY),
                          placeholder="e.g. runs/ or /data/checkpoints",
                          help=f"Checkpoints in {catalog.default_folder()} are always listed; add a folder "
                               "(or a folder of training runs) here.")
        else:
            st.session_state.pop(FOLDER_KEY, None)
        options = devices()
        st.selectbox("Device", options, index=options.index(current_device()), key="_device",
                     on_change=_keep, args=("_device", DEVICE_KEY))
        entries, problems = checkpoints()
        for problem in problems:
            st.warning(problem)
        usable = sum(e.usable for e in entries)
        st.caption(f"{usable} usable checkpoint{'s' if usable != 1 else ''}"
                   f"{f', {len(entries) - usable} unusable' if len(entries) > usable else ''}; "
                   f"torch uses {compute.threads()} CPU thread{'s' if compute.threads() != 1 else ''}")


# ------------------------------------------------------------------------------------- checkpoints
def _scan(folder: Path) -> list[catalog.Entry]:
    return cache.scan_folder(str(folder.resolve()), catalog.folder_stamp(folder))


def checkpoints() -> tuple[list[catalog.Entry], list[str]]:
    """Every checkpoint of the default folder and the sidebar's folder, and what is wrong with
    the folders themselves (messages, never exceptions)."""
    lists, problems = [], []
    default = catalog.default_folder()
    if default.is_dir():
        try:
            lists.append(_scan(default))
        except (OSError, ValueError) as e:
            problems.append(f"cannot scan {default}: {e}")
    extra = str(st.session_state.get(FOLDER_KEY, "") or "").strip()
    if extra:
        path = Path(extra).expanduser()
        if not path.is_dir():
            problems.append(f"{extra} is not a folder I can read; listing {default} only.")
        else:
            try:
                lists.append(_scan(path))
            except (OSError, ValueError) as e:
                problems.append(f"cannot scan {extra}: {e}")
    return catalog.merge(*lists), problems


def no_checkpoints() -> None:
    st.info(f"No usable checkpoint in {catalog.default_folder()} yet. Train and export one, then reload:")
    st.code(catalog.HOW_TO_MAKE_ONE, language="bash")
    st.caption(f"Or name another folder in the sidebar, or set ${catalog.FOLDER_ENV} before starting the app.")


def usable_or_stop() -> list[catalog.Entry]:
    """The usable checkpoints; without any, explain how to make one and end the page."""
    usable = [e for e in checkpoints()[0] if e.usable]
    if not usable:
        no_checkpoints()
        st.stop()
    return usable


def pick_checkpoint(entries: Sequence[catalog.Entry], key: str, label: str = "Checkpoint",
                    reset: Sequence[str] = (), index: int = 0, share: bool = False) -> catalog.Entry:
    """A checkpoint select box; choosing another one resets the widgets in ``reset`` so they
    take that model's defaults. With ``share`` it opens on the checkpoint of the session (or the
    link: ``shared``) and its choice becomes the session's, the model-dependent sampler and steps
    forgotten when it changes."""
    labels = [e.label for e in entries]
    if st.session_state.get(key) not in labels:
        st.session_state.pop(key, None)
    if share:
        shared.restore(key, "checkpoint", lambda value: value in labels)
    choice = st.selectbox(label, labels, **_unless_set(key, index=min(index, len(labels) - 1)), key=key,
                          on_change=forget, args=(tuple(reset), ("sampler", "steps") if share else ()))
    if share:
        shared.keep("checkpoint", choice)
    return entries[labels.index(choice)]


def _unless_set(key: str, **default) -> dict:
    """A widget's default argument, left out when its value is already in the session state (set
    by ``shared.restore`` or ``preset``): Streamlit takes the state's value and warns when given both."""
    return {} if key in st.session_state else default


UPLOAD_TYPES = [ext.lstrip(".") for ext in IMAGE_EXTENSIONS]  # what uploads may be: the data loader's formats


def forget(keys: Sequence[str], shared_names: Sequence[str] = ()) -> None:
    """Drop the values of these widgets (and of these shared settings); the page's next run
    ``preset``s them afresh."""
    for k in keys:
        st.session_state.pop(k, None)
    shared.forget(*shared_names)


def preset(key: str, value: Any) -> str:
    """Give the widget ``key`` the page's default ``value`` unless it holds a value already.
    Set through session state, because a keyed widget whose default alone changes keeps showing
    its old value in the browser while the new default runs; a value set here is sent to the
    browser, so the box shows what runs. Create the widget without ``value``/``default``."""
    if key not in st.session_state:
        st.session_state[key] = value
    return key


def load(entry: catalog.Entry) -> tuple[requests.ModelRef, LoadedModel]:
    """The model of ``entry`` on the session's device; on failure an error box and the page ends."""
    ref = requests.model_ref(entry, current_device())
    with guard(f"Loading {entry.label}"):
        return ref, cache.get_model(ref)
    st.stop()
    raise AssertionError("unreachable")


def gflops(model: LoadedModel) -> float:
    return plans.gflops_per_image(model.experiment.network)


def default_plan(models: Sequence[LoadedModel], count: int = 4, ladder: Sequence[int] = (20, 10, 5),
                 share: float = 1.0) -> tuple[int, int]:
    """(images, steps) of a page's default action over ``models`` (their costs add up), taking
    ``share`` of the time budget (pages with two actions split it); steps of the default sampler."""
    cost = sum(gflops(m) for m in models)
    limit = min(step_limit(DEFAULT_SAMPLER, m.experiment.schedule) for m in models)
    return plans.default_plan(cost, current_device(), compute.threads(), count, ladder, limit, share)


def cost(models: Sequence[LoadedModel], evaluations: float) -> float:
    """GFLOP of ``evaluations`` network evaluations of one image (images x steps) on each model."""
    return sum(gflops(m) for m in models) * evaluations


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def ready(key: str, params: object, models: Sequence[LoadedModel], evaluations: float,
          what: str = "Generate") -> bool:
    """Whether to run an action of ``evaluations`` (images x steps) on ``models`` now: never when
    it is beyond the server's compute budget (ValueError, for ``guard``); at once when it is quick,
    else after its button is pressed (the pressed request, ``params``, is remembered, so later
    reruns show the cached result). An action its visitor stopped waits for the button again."""
    return ready_cost(key, params, cost(models, evaluations), what)


def ready_cost(key: str, params: object, gflop: float, what: str = "Generate") -> bool:
    """``ready`` for an action whose cost is given in GFLOP (e.g. summed over models that run
    different numbers of steps)."""
    compute.check_budget(gflop)
    stopped = st.session_state.get(f"{key}_stopped") == params
    seconds = compute.estimate_seconds(gflop, current_device())
    if not stopped and (seconds <= plans.AUTO_SECONDS or st.session_state.get(key) == params):
        return True
    gate = st.empty()
    with gate.container():
        st.info(f"{'Stopped. ' if stopped else ''}This takes about {duration(seconds)} on {current_device()} "
                f"at the recent speed; press {what} to start.")
        pressed = st.button(what, key=f"{key}_go", type="primary")
    if pressed:
        st.session_state[key] = params
        st.session_state.pop(f"{key}_stopped", None)
        gate.empty()  # the run replaces the gate
    return pressed


def _stop(key: str, params: object) -> None:
    st.session_state[f"{key}_stopped"] = params
    st.session_state.pop(key, None)


def _visitor_present() -> Callable[[], bool]:
    """Whether this script run's browser session is still connected (always, outside a server)."""
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or not runtime.exists():
        return lambda: True
    server, session = runtime.get_instance(), ctx.session_id
    return lambda: server.is_active_session(session)


@contextmanager
def running(key: str, params: object, evaluations: float, what: str = "Generating") -> Iterator[compute.Job]:
    """A progress bar with an ETA and a Stop button while the action ``params`` runs its
    ``evaluations`` image-steps (images x steps; the ``compute.Job`` to pass to ``cache``); both
    go when it ends.
    Stop (or the visitor leaving) ends the work at the next step; the page then says so and
    waits for the action's button (``ready``)."""
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text=f"{what}: starting...")
        st.button("Stop", key=f"{key}_stop", on_click=_stop, args=(key, params))
    # The bar belongs to the page, not to the cached computation that moves it: updates run in
    # the page's context, so the cache records none of them for replay.
    page = contextvars.copy_context()
    shown = [0.0]

    def show(job: compute.Job) -> None:
        now = time.perf_counter()
        if job.done < job.total and now - shown[0] < 0.1:
            return
        shown[0] = now
        eta = job.eta()
        left = "" if eta is None else f", about {duration(eta)} left"
        page.run(bar.progress, job.fraction(), text=f"{what}: {job.fraction():.0%}{left}")

    job = compute.Job(max(1, round(evaluations)), show, _visitor_present())
    try:
        yield job
    except compute.Stopped:
        _stop(key, params)
        slot.empty()
        st.warning(f"{what} stopped at {job.fraction():.0%}.")
        st.stop()
    slot.empty()


# ------------------------------------------------------------------------------------------ images
def upscale(image: np.ndarray, target: int = 256) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor so the longer side reaches ``target``
    (64-pixel samples stay crisp instead of being blurred by the browser)."""
    factor = max(1, target // max(image.shape[0], image.shape[1]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def show(image: np.ndarray, caption: str | None = None, target: int = 256, where=None,
         width: int | None = None) -> None:
    """Show a uint8 [H x W x 3] image as a lossless PNG, upscaled with ``upscale``; with ``width``,
    drawn at that many pixels whatever its own size (a picture that must not change size)."""
    (where or st).image(png_bytes(upscale(image, target)), caption=caption, output_format="PNG",
                        width=width if width is not None else "content")


def seed_inputs(prefix: str, count: int | None = 4, where=None) -> tuple[int, int]:
    """First seed and number of images (None: one seed only)."""
    where = where or st
    shared.restore(f"{prefix}_seed", "seed", lambda value: 0 <= value <= plans.MAX_SEED)
    seed = where.number_input("First seed", min_value=0, max_value=plans.MAX_SEED, step=1,
                              key=preset(f"{prefix}_seed", 0), help="Image i uses seed first + i: the same seed "
                              "gives the same image on any machine.")
    shared.keep("seed", int(seed))
    if count is None:
        return int(seed), 1
    n = where.number_input("Images", min_value=1, step=1, key=preset(f"{prefix}_count", count),
                           help=f"At most {plans.MAX_IMAGES} per grid.")
    return int(seed), int(n)


def steps_input(prefix: str, default: int, limit: int, where=None) -> int:
    return int((where or st).number_input("Sampling steps", step=1, key=preset(f"{prefix}_steps", min(default, limit)),
                                          help=f"1 to {limit} for this model's schedule; fewer is faster."))


@dataclass(frozen=True)
class ModelChoice:
    """A page's chosen checkpoint, its loaded model and the defaults of the page's action for it."""

    entry: catalog.Entry
    ref: requests.ModelRef
    model: LoadedModel
    count0: int  # images of the page's default action
    steps0: int  # its steps (default sampler)


def model_inputs(entries: Sequence[catalog.Entry], prefix: str, count: int = 4,
                 ladder: Sequence[int] = (20, 10, 5), reset: Sequence[str] = ("steps",)) -> ModelChoice:
    """A page's checkpoint picker (choosing another resets ``{prefix}_{reset}`` widgets to that
    model's defaults), the loaded model, and the defaults of the page's action for it."""
    entry = pick_checkpoint(entries, f"{prefix}_checkpoint", index=catalog.best_index(entries), share=True,
                            reset=tuple(f"{prefix}_{k}" for k in (*reset, "sampler", "clip")))
    ref, model = load(entry)
    count0, steps0 = default_plan([model], count, ladder)
    return ModelChoice(entry, ref, model, count0, steps0)


@dataclass(frozen=True)
class SamplerInputs:
    """What the sampler widgets hold; ``config()`` checks it (``SamplerConfig`` raises ValueError)."""

    name: str
    steps: int
    eta: float
    clip: bool = False  # clip predicted x0 to the data range at each step
    ddpm_variance: str = "posterior"  # the model's own DDPM step variance (diffusers' variance_type)

    def config(self) -> SamplerConfig:
        return SamplerConfig(self.name, self.steps, self.eta, self.clip,
                             self.ddpm_variance if self.name == "ddpm" else "posterior")


def sampler_inputs(prefix: str, choice: ModelChoice, deterministic: bool = False, where=None) -> SamplerInputs:
    """Sampler box (every registered sampler; with ``deterministic`` only those that can run
    without noise, and no eta), opening on the sampler the checkpoint was trained for; steps (the
    sampler's limit on the model's schedule); x0 clipping; and eta (for the samplers that take
    it), applied by its button, so that moving the slider step by step starts no job per step.
    Sampler and steps are the session's shared ones when they fit (``shared``)."""
    where = where or st
    names = [n for n, spec in REGISTRY.items() if not (deterministic and spec.stochastic)]
    about = "; ".join(f"{REGISTRY[n].label}: {REGISTRY[n].summary}" for n in names)
    if deterministic:
        about += ". Deterministic samplers only, so that nearby noise gives nearby images"
    trained = plans.trained_sampler(choice.model.experiment)
    first = trained if trained in names else DEFAULT_SAMPLER if DEFAULT_SAMPLER in names else names[0]
    about += f". This checkpoint was trained for {REGISTRY[trained].label}"
    key = f"{prefix}_sampler"
    shared.restore(key, "sampler", lambda value: value in names, "this page offers " + ", ".join(names))
    name = where.selectbox("Sampler", names, **_unless_set(key, index=names.index(first)), key=key,
                           format_func=lambda n: REGISTRY[n].label, help=about + ".")
    shared.keep("sampler", name)
    limit = step_limit(name, choice.model.experiment.schedule)
    shared.restore(f"{prefix}_steps", "steps", lambda value: 1 <= value <= limit,
                   f"{REGISTRY[name].label} takes 1 to {limit} steps on this model")
    steps = steps_input(prefix, choice.steps0, limit, where)
    if 1 <= steps <= limit:
        shared.keep("steps", steps)
    clip = where.checkbox("Clip predicted x0", key=f"{prefix}_clip",
                          help="At every step, clip the model's estimate of the clean image to the pixel range "
                               "and recompute the noise from it (the CLI's --clip). The recorded FIDs were "
                               "measured without it.")
    variance = ddpm_variance(choice.model.description)
    if deterministic:
        return SamplerInputs(name, steps, 0.0, clip, variance)
    takers = " and ".join(spec.label for spec in REGISTRY.values() if spec.uses_eta)
    label, about_eta = f"eta ({takers})", "0: deterministic; 1: the DDPM posterior variance."
    if not REGISTRY[name].uses_eta:
        where.slider(label, 0.0, 1.0, 0.0, 0.05, key=f"{prefix}_eta", disabled=True, help=about_eta)
        return SamplerInputs(name, steps, 0.0, clip, variance)
    with where.form(f"{prefix}_eta_form", border=False):
        eta = st.slider(label, 0.0, 1.0, 0.0, 0.05, key=f"{prefix}_eta", help=about_eta)
        st.form_submit_button("Apply eta", help="Sampling starts when you apply a new eta, not at every "
                                                "step of the slider.")
    return SamplerInputs(name, steps, float(eta), clip, variance)


@dataclass(frozen=True)
class GridChoice:
    """The Sample and Live pages' inputs: the checkpoint, its model and the validated request."""

    entry: catalog.Entry
    model: LoadedModel
    request: requests.GridRequest
    cols: int | None  # grid columns, when asked for


def grid_inputs(entries: Sequence[catalog.Entry], prefix: str, action: str, columns: bool = False) -> GridChoice:
    """Checkpoint, sampler, steps, eta, first seed, image count (and, with ``columns``, grid
    columns), with defaults from the model's size; wrong inputs end the page with a message."""
    choice = model_inputs(entries, prefix, reset=("steps", "count", "eta"))
    sampler = sampler_inputs(prefix, choice)
    seed, count = seed_inputs(prefix, choice.count0)
    cols = None
    if columns:
        cols = int(st.number_input("Grid columns", min_value=1, max_value=32, step=1,
                                   key=preset(f"{prefix}_cols", min(choice.count0, 4))))
    request = valid(action, lambda: requests.grid(choice.ref, choice.model, seed, count, sampler.config()))
    return GridChoice(choice.entry, choice.model, request, cols)
