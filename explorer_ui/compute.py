"""Process-wide compute settings of the app: torch threads (set once), inference locks, the
compute budget of a request, and the measured speed that time estimates come from. (no streamlit)

Why a lock around inference on a shared model: not for correctness. A cached ``LoadedModel`` is in
eval mode and every call runs under ``torch.inference_mode`` (``model.Denoiser``), so concurrent
forward passes read the same weights and mutate nothing (BatchNorm uses its running statistics in
eval mode). The lock is for throughput and memory: on a CPU one forward pass already uses every
intra-op thread, so two sessions computing at once split the cores, oversubscribe the thread pool
(often far slower than taking turns; see also ``OMP_WAIT_POLICY`` in ``diffusion_core/threads.py``)
and double peak memory; on a GPU two large batches at once can run out of memory. So each device
has one lock, held for one sampling step at a time (``stepwise``), never for a whole request: a
visitor who asks for a 1000-step grid shares the device step by step with everyone who comes
later. The lock is a ``FairLock`` (first come, first served): a plain ``threading.Lock`` may go
again to the thread that just released it, before a waiting thread wakes, so nothing bounds a
waiter's turn; a ``FairLock`` hands it to the oldest waiter.

A ``Job`` is one visitor's action as the steps see it: it counts them (progress and ETA), and
stops the work at the next step, with ``Stopped``, when its visitor pressed Stop or left.

On a shared server ``$DIFFUSION_EXPLORER_MAX_GFLOP`` caps what one request may cost (network
GFLOPs x images x steps, ``check_budget``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from diffusion_core.samplers import StepState

from . import plans

THREADS_ENV = "DIFFUSION_EXPLORER_THREADS"
MAX_GFLOP_ENV = "DIFFUSION_EXPLORER_MAX_GFLOP"
SPEED_WEIGHT = 0.3  # weight of the newest step in the moving average of the measured speed

_configured = threading.Lock()
_threads: int | None = None
_locks: dict[str, FairLock] = {}
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


# ------------------------------------------------------------------------------------------- locks
class FairLock:
    """A lock granted in the order it was asked for (first come, first served); not re-entrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[object] = deque()  # waiting tickets, oldest first
        self._held = False

    def acquire(self) -> None:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._held or self._queue[0] is not ticket:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: give up the place in the queue
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._held = True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def device_lock(device: str) -> FairLock:
    with _locks_guard:
        return _locks.setdefault(device.split(":")[0] if device.startswith("cpu") else device, FairLock())


@contextmanager
def inference(device: str) -> Iterator[None]:
    """Hold the device's lock for one short piece of inference (see the module docstring)."""
    with device_lock(device):
        yield


# ------------------------------------------------------------------------------------------ budget
def gflop_limit() -> float | None:
    """GFLOP one request may cost (``$DIFFUSION_EXPLORER_MAX_GFLOP``), None when unlimited."""
    raw = os.environ.get(MAX_GFLOP_ENV, "").strip()
    if not raw:
        return None
    try:
        limit = float(raw)
    except ValueError:
        limit = float("nan")
    if not limit > 0 or limit == float("inf"):
        raise ValueError(f"the server's {MAX_GFLOP_ENV}={raw!r} is not a positive number of GFLOP; "
                         "its operator must fix it")
    return limit


def check_budget(gflop: float) -> None:
    """Raise ValueError when a request's estimated cost (network GFLOPs per image x images x
    steps) is beyond the server's per-request budget."""
    limit = gflop_limit()
    if limit is not None and gflop > limit:
        raise ValueError(f"this request needs about {gflop:,.0f} GFLOP and this server allows {limit:,.0f} GFLOP "
                         f"per request ({MAX_GFLOP_ENV}): choose fewer images, steps or frames, or a smaller model")


# ------------------------------------------------------------------------------------------- speed
_speed: dict[str, float] = {}  # device kind -> measured seconds per GFLOP (moving average)
_speed_guard = threading.Lock()


def _kind(device: str) -> str:
    return device.split(":")[0]


def record_speed(device: str, seconds: float, gflop: float) -> None:
    """Fold one measured piece of work (``gflop`` of network evaluations in ``seconds``) into the
    exponential moving average of this process's speed on ``device``."""
    if gflop <= 0 or seconds < 0:
        return
    measured = seconds / gflop
    with _speed_guard:
        old = _speed.get(_kind(device))
        _speed[_kind(device)] = measured if old is None else (1 - SPEED_WEIGHT) * old + SPEED_WEIGHT * measured


def seconds_per_gflop(device: str) -> float:
    """The measured speed on ``device`` (recent steps weigh most); before the first measurement
    the constant calibrated on an idle machine (``plans.SECONDS_PER_GFLOP``)."""
    with _speed_guard:
        measured = _speed.get(_kind(device))
    return measured if measured is not None else plans.seconds_per_gflop(device, threads())


def estimate_seconds(gflop: float, device: str) -> float:
    """Time of ``gflop`` of network evaluations on ``device`` at the recent speed."""
    return gflop * seconds_per_gflop(device)


# -------------------------------------------------------------------------------------------- jobs
class Stopped(Exception):
    """The visitor pressed Stop or left: the job ended at a step boundary."""


@dataclass
class Job:
    """One visitor's action, counted in image-steps (one sampler step of one image: a batch step
    of N images counts N, so chunking does not matter). ``on_step`` shows progress after each step
    (it may raise to end the job); ``alive`` says whether the visitor is still there."""

    total: int  # image-steps the action plans (images x steps of all its sampler loops together)
    on_step: Callable[[Job], None] = lambda job: None
    alive: Callable[[], bool] = lambda: True
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def step(self, images: int) -> None:
        self.done += images
        self.on_step(self)

    def fraction(self) -> float:
        return min(1.0, self.done / max(1, self.total))

    def check(self) -> None:
        if not self.alive():
            raise Stopped(f"stopped at {self.fraction():.0%}: the visitor left")

    def eta(self) -> float | None:
        """Seconds still to go at this job's own pace so far (waits for the lock included)."""
        if self.done == 0:
            return None
        return (time.perf_counter() - self.started) / self.done * max(0, self.total - self.done)


def stepwise(states: Iterator[StepState], device: str, gflop_per_image: float, job: Job | None = None,
             calls_per_step: float = 1) -> Iterator[StepState]:
    """Drive a sampler's step generator one step at a time under the device's lock (others'
    steps interleave between ours), measuring the speed; a job that was stopped ends here, before
    its next step. ``calls_per_step``: network evaluations per image in one step."""
    cuda = device.startswith("cuda")
    while True:
        if job is not None:
            job.check()
        with device_lock(device):
            start = time.perf_counter()
            try:
                state = next(states)
            except StopIteration:
                return
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        record_speed(device, seconds, gflop_per_image * state.x_t.shape[0] * calls_per_step)
        if job is not None:
            job.step(state.x_t.shape[0])
        yield state


def driver(device: str, gflop_per_image: float, job: Job | None = None,
           calls_per_step: float = 1) -> Callable[[Iterator[StepState]], Iterator[StepState]]:
    """``stepwise`` as the core's ``drive`` argument (``diffusion_core.generate``)."""
    return lambda states: stepwise(states, device, gflop_per_image, job, calls_per_step)
