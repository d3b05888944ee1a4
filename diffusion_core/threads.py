"""How torch's CPU threads wait: the one thread policy of the CLI and the app.

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it, so ``apply_thread_policy()`` must run
before anything imports torch: ``python -m diffusion_core`` (``__main__.py``) and the app
(``explorer_ui/__init__.py``) call it first thing. PASSIVE lets idle OpenMP threads sleep instead of
spinning: on a CPU shared with other processes or app sessions, spinning threads of a torch pool
can make each step several times slower (a sampling run measured 101 s spinning against 22 s
sleeping, identical images); on an idle machine sleeping costs next to nothing. A value the user
set in the environment wins. This module imports nothing heavy.
"""

from __future__ import annotations

import os

WAIT_POLICY = "PASSIVE"


def apply_thread_policy() -> str:
    """Set ``OMP_WAIT_POLICY`` to PASSIVE unless it is already set; returns the value in force.
    It takes effect only if torch has not been imported yet (OpenMP keeps the policy it loaded with)."""
    return os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
