"""Seed lists: one grammar and one bound for every command and the app.

A seed list is whole numbers and ranges separated by commas or spaces:

    3               one seed
    3,5,9           three seeds (``3 5 9`` too)
    0-7             0 to 7 inclusive: 8 seeds
    0:100           0 up to, not including, 100 (as Python's range): 100 seeds
    0-3, 10 12:14   a mix: 0, 1, 2, 3, 10, 12, 13

Seeds lie in 0 <= s < 2**63 (what torch's generators take after the samplers' step-noise offset);
a list holds at most ``max_count`` seeds, counted before any is made. Order and repeats are kept:
seed i is image i. Errors are ValueErrors whose message a user can act on.
"""

from __future__ import annotations

import re
from typing import Sequence

SEED_LIMIT = 2**63  # seeds are 0 <= s < SEED_LIMIT
MAX_SEEDS = 10_000  # default cap on the seeds of one request

_TOKEN = re.compile(r"([0-9]+)(?:([-:])([0-9]+))?")


def parse_seeds(text: str | Sequence[str], max_count: int = MAX_SEEDS) -> list[int]:
    """``"0-3, 10 12:14"`` -> [0, 1, 2, 3, 10, 12, 13] (grammar in the module docstring); a
    sequence of strings (argv tokens) is read as if joined by spaces."""
    if not isinstance(text, str):
        text = " ".join(text)
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not tokens:
        raise ValueError("type some seeds, e.g. 3, 17, 42 or 0-7")
    bounds = [_token_bounds(tok) for tok in tokens]
    count = sum(hi - lo for lo, hi in bounds)
    if count > max_count:
        raise ValueError(f"{count} seeds asked for; at most {max_count} seeds per request")
    return [s for lo, hi in bounds for s in range(lo, hi)]


def seed_range(start: int, count: int, max_count: int = MAX_SEEDS) -> list[int]:
    """Seeds start, start + 1, ..., start + count - 1, under the same bound and cap as parse_seeds."""
    if count < 1:
        raise ValueError("ask for at least one seed")
    if count > max_count:
        raise ValueError(f"{count} seeds asked for; at most {max_count} seeds per request")
    _check_bound(start, start + count, f"{start} and the {count - 1} after it")
    return list(range(start, start + count))


def _token_bounds(tok: str) -> tuple[int, int]:
    """One token as the half-open interval [lo, hi) of its seeds."""
    m = _TOKEN.fullmatch(tok)
    if not m:
        raise ValueError(f"{tok!r} is not a seed: use whole numbers like 3, 17, 42 or ranges like 0-7 or 0:8")
    lo = int(m.group(1))
    sep, end = m.group(2), m.group(3)
    hi = lo + 1 if sep is None else int(end) + (sep == "-")
    if hi <= lo:
        raise ValueError(f"seed range {tok!r} runs backwards" if sep == "-" or hi < lo else
                         f"seed range {tok!r} is empty (a:b stops before b)")
    _check_bound(lo, hi, repr(tok))
    return lo, hi


def _check_bound(lo: int, hi: int, what: str) -> None:
    if lo < 0 or hi > SEED_LIMIT:
        raise ValueError(f"seeds must be from 0 to 2**63 - 1 ({SEED_LIMIT - 1}); {what} is not")
