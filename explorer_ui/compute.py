"""Process-wide compute settings of the app: torch threads (set once) and inference locks.

Why a lock around inference on a shared model: not for correctness. A cached ``LoadedModel`` is in
eval mode and every call runs under ``torch.inference_mode`` (``model.Denoiser``), so concurrent
forward passes read the same weights and mutate nothing (BatchNorm uses its running statistics in
eval mode). The lock is for throughput and memory: on a CPU one forward pass already uses every
intra-op thread, so two sessions computing at once split the cores, oversubscribe the thread pool
(often far slower than taking turns; see also ``OMP_WAIT_POLICY`` in ``diffusion_core/threads.py``)
and double peak memory; on a GPU two large batches at once can run out of memory. So each device
has one lock; page actions hold it for one cached computation, and the Live page for one sampling
step at a time, so that several live viewers interleave.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

THREADS_ENV = "DIFFUSION_EXPLORER_THREADS"

_configured = threading.Lock()
_threads: int | None = None
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_torch() -> int:
    """Set torch's intra-op threads once per process: ``$DIFFUSION_EXPLORER_THREADS`` or the CPUs
    this process may use (at most 16). Returns the thread count; later calls change nothing."""
    global _threads
    with _configured:
        if _threads is None:
            wanted = os.environ.get(THREADS_ENV, "").strip()
            threads = int(wanted) if wanted.isdigit() and int(wanted) > 0 else min(16, available_cpus())
            torch.set_num_threads(threads)
            _threads = threads
        return _threads


def threads() -> int:
    return _threads if _threads is not None else torch.get_num_threads()


def device_lock(device: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(device.split(":")[0] if device.startswith("cpu") else device, threading.Lock())


@contextmanager
def inference(device: str) -> Iterator[None]:
    """Hold the device's lock for one piece of inference (see the module docstring)."""
    with device_lock(device):
        yield
