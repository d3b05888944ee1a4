"""The app's switches that an operator sets in the environment (plain Python, no streamlit).

A switch that guards a shared server must not open on a value nobody meant: ``env_flag`` knows
the usual spellings of on and off, and reads any other value as the safe side of the switch (and
says so in the log) rather than as off.
"""

from __future__ import annotations

import logging
import os

LOCK_FOLDERS_ENV = "DIFFUSION_EXPLORER_LOCK_FOLDERS"  # set: visitors cannot point the app at folders of the server

TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y", "t"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", "f", ""})

log = logging.getLogger("explorer_ui")


def env_flag(name: str, *, default: bool, closed: bool) -> bool:
    """The on/off switch ``name`` of the environment: ``default`` when unset or empty, True or False
    for the words of ``TRUE_WORDS`` and ``FALSE_WORDS`` (any case, spaces around ignored), and
    ``closed`` (the safe value) for anything else, such as "2" or "enabled", with a warning."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    log.warning("%s=%r is neither on (%s) nor off (%s); taken as %s, the safe side", name, raw,
                "/".join(sorted(TRUE_WORDS)), "/".join(sorted(FALSE_WORDS - {""})), "on" if closed else "off")
    return closed


def folders_locked() -> bool:
    """Whether visitors are kept from browsing the server's folders (``DIFFUSION_EXPLORER_LOCK_FOLDERS``;
    unrecognised values lock)."""
    return env_flag(LOCK_FOLDERS_ENV, default=False, closed=True)
