"""The settings that pages share (checkpoint, sampler, steps, first seed): kept in the session,
so that a page opens on what the last page used, and mirrored in the URL's query string
(``?checkpoint=ours2_eps&sampler=ddim&steps=20&seed=3``), so that a view can be shared.

Each page keeps its own widget keys (``sample_seed``, ``traj_seed``, ...); Streamlit forgets a
page's widget state when another page runs, so a page's widget that has no state yet starts from
the shared value (``restore``), and every drawn widget's value becomes the shared one (``keep``).

The URL is untrusted: it is read once per session (the first run), each value checked
(``parse``); a value that is not valid is ignored and said so in a note on the page, never an
exception.
"""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from diffusion_core.samplers import REGISTRY

from . import plans

NAMES = ("checkpoint", "sampler", "steps", "seed")
STATE, READ, NOTES, UNUSED = "shared_settings", "shared_url_read", "shared_url_notes", "shared_url_unused"
MAX_URL_STEPS = 100_000  # beyond any schedule; a model's own limit is checked when the value is used
MAX_TEXT = 200  # longest checkpoint label taken from a URL


def shown(text: str) -> str:
    """An untrusted value as a markdown code span (shown literally: no link, image or formatting
    from a crafted URL), cut to 40 characters, without backticks and unprintable characters."""
    return "`" + "".join(c for c in text[:40] if c.isprintable() and c != "`") + "`"


def _whole(name: str, text: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name}={shown(text)} is not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {low} to {high}")
    return value


def parse(name: str, text: str, labels: list[str]) -> Any:
    """One query value -> the setting's value; ``ValueError`` naming the field when it is not valid."""
    text = text.strip()
    if name == "checkpoint":
        if len(text) > MAX_TEXT or text not in labels:
            raise ValueError(f"checkpoint={shown(text)} is not a checkpoint listed here")
        return text
    if name == "sampler":
        if text not in REGISTRY:
            raise ValueError(f"sampler={shown(text)} is not one of {', '.join(REGISTRY)}")
        return text
    if name == "steps":
        return _whole(name, text, 1, MAX_URL_STEPS)
    if name == "seed":
        return _whole(name, text, 0, plans.MAX_SEED)
    raise ValueError(f"unknown setting {name}")


def settings() -> dict[str, Any]:
    return st.session_state.setdefault(STATE, {})


def read_url(checkpoint_labels: Callable[[], list[str]]) -> None:
    """Once per session: the URL's settings into the shared ones; notes for the values ignored.
    ``checkpoint_labels`` gives the usable checkpoints' labels (asked only on that first run)."""
    if st.session_state.get(READ):
        return
    st.session_state[READ] = True
    labels = checkpoint_labels()
    notes, unused = [], set()
    for name in NAMES:
        if name not in st.query_params:
            continue
        try:
            settings()[name] = parse(name, st.query_params[name], labels)
            unused.add(name)
        except ValueError as e:
            notes.append(f"{e}; ignored.")
    st.session_state[NOTES], st.session_state[UNUSED] = notes, unused


def show_notes(where) -> None:
    """The URL's values that were ignored, as one warning in ``where`` (until the user changes a
    shared setting: ``keep``)."""
    notes = st.session_state.get(NOTES)
    if notes:
        where.warning("The link's settings were not all usable: " + " ".join(notes))


def write_url() -> None:
    """The query string mirrors the shared settings (only these keys; others are left alone)."""
    for name in NAMES:
        value = settings().get(name)
        if value is None:
            if name in st.query_params:
                del st.query_params[name]
        elif st.query_params.get(name) != str(value):
            st.query_params[name] = str(value)


def get(name: str) -> Any:
    return settings().get(name)


def restore(widget_key: str, name: str, fits: Callable[[Any], bool] = lambda value: True,
            limits: str = "") -> None:
    """Before a page draws its widget ``widget_key``: give it the shared ``name`` if the widget has
    no state of its own yet and the value ``fits`` this page (e.g. within the model's step limit).
    A link's value that does not fit the first page to use it is dropped with a note (``limits``
    says what would fit)."""
    value = get(name)
    first_use = name in st.session_state.get(UNUSED, ())
    st.session_state.get(UNUSED, set()).discard(name)
    if widget_key in st.session_state or value is None:
        return
    if fits(value):
        st.session_state[widget_key] = value
    elif first_use:
        forget(name)
        st.session_state.setdefault(NOTES, []).append(f"{name}={value} does not fit here ({limits}); ignored.")


def keep(name: str, value: Any) -> None:
    """A drawn widget's value becomes the shared setting (and the URL's)."""
    if settings().get(name) != value:
        if name in settings():
            st.session_state[NOTES] = []  # the user moved on from the link
        settings()[name] = value
    write_url()


def forget(*names: str) -> None:
    """Drop shared settings that depend on something just changed (a new checkpoint's defaults)."""
    for name in names:
        settings().pop(name, None)
