"""Shared benchmark machinery: settings, timed windows, FLOP counting, the result table.

A benchmark script lists its cases as ``Case(section, label, run)``; ``main`` runs the cases of
every script it is given in one process, one after the other, guards each (a failing or
unavailable case becomes a row that says why), and prints ONE markdown table at the end, also
written as JSON to ``$OUT/bench.json`` when ``$OUT`` is set.

Timing: the first call (compilation, cuDNN autotuning) and a short warm-up are untimed; then
``windows`` windows of at least ``window_s`` seconds each run as many whole calls as fit, timed
with CUDA events on a GPU (wall clock on a CPU); the figure is the median window's rate.

    python -m bench.bench_train --device cuda          # one script
    bash bench/run_gpu.sh                              # every script, one table
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_core.unet import UNetConfig

PEAK_FLOPS = 790e12  # dense bf16 FLOP/s of one H100, as measured (8192^3 matrix product)
REFERENCE = UNetConfig(widths=(32, 64, 96, 128), block_depth=2, image_size=64)  # the Keras DDIM network
TINY = UNetConfig(widths=(8, 16), block_depth=1, image_size=16)  # stands in for every network in --quick
_START = time.perf_counter()


def log(message: str) -> None:
    """A progress line, stamped with seconds since the start, flushed at once."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Settings:
    device: torch.device
    quick: bool  # tiny sizes and few iterations: a smoke test of every code path
    warmup_s: float  # untimed seconds after the first call
    window_s: float  # each timed window runs whole calls until at least this long
    windows: int  # timed windows per case; the median is reported
    curve_steps: int  # training steps of the loss-curve comparison
    compile_backend: str  # torch.compile backend; "inductor" is the real one
    compile_mode: str | None = None  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    only: tuple[str, ...] = ()  # run only the cases whose label contains one of these

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Row:
    """One line of the table. ``passes`` converts forward FLOPs to the work behind one image:
    3 for a training step (forward + backward), the number of steps for a sampler."""

    section: str = ""
    case: str = ""
    params: int | None = None
    gflop_per_image: float | None = None  # one network forward, per image
    passes: float = 3.0
    images_per_s: float | None = None
    note: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # extra figures, JSON only

    @property
    def mfu(self) -> float | None:
        if self.images_per_s is None or self.gflop_per_image is None:
            return None
        return self.passes * self.gflop_per_image * 1e9 * self.images_per_s / PEAK_FLOPS


@dataclass(frozen=True)
class Case:
    section: str
    label: str
    run: Callable[[], Row]  # returns the figures; section and label are filled in by main


class Unavailable(RuntimeError):
    """A case that cannot run here (a peer package that does not import); the message says why."""


# --- timing -----------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    images_per_s: float  # median over the windows
    first_call_s: float  # includes compilation and autotuning


def measure(fn: Callable[[], Any], images_per_call: int, settings: Settings) -> Timing:
    """Images per second of ``fn`` (each call makes ``images_per_call`` images)."""
    device = settings.device
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    warm_until = time.perf_counter() + settings.warmup_s
    fn()  # at least one more untimed call, then until warm_until
    while time.perf_counter() < warm_until:
        fn()
    synchronize(device)
    rates = []
    for _ in range(settings.windows):
        calls, seconds = _window(fn, device, settings.window_s)
        rates.append(calls * images_per_call / seconds)
    return Timing(statistics.median(rates), first)


def _window(fn: Callable[[], Any], device: torch.device, window_s: float) -> tuple[int, float]:
    """(calls, seconds) of one window; the device is idle at its start and its end."""
    cuda = device.type == "cuda"
    if cuda:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
    t0 = time.perf_counter()
    calls = 0
    while calls == 0 or time.perf_counter() - t0 < window_s:
        fn()
        calls += 1
    if cuda:
        end.record()
        end.synchronize()
        return calls, begin.elapsed_time(end) / 1e3
    return calls, time.perf_counter() - t0


# --- FLOPs, precision -------------------------------------------------------------------------
def forward_gflop_per_image(forward: Callable[[], Any], batch: int) -> float:
    """Forward GFLOP per image of ``forward()`` (one call on ``batch`` images), as counted by
    torch.utils.flop_counter: convolutions, matrix products and attention; elementwise work,
    normalisation and pooling count zero."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / batch / 1e9


@contextlib.contextmanager
def full_fp32(device: torch.device):
    """True float32 on CUDA: TF32 off for convolutions and matrix products, restored after."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def release_memory() -> None:
    """Forget compiled graphs and cached blocks between cases, so each case starts clean."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(network: UNetConfig) -> str:
    """E.g. "64px [32,64,96,128] d2"."""
    return f"{network.image_size}px [{','.join(map(str, network.widths))}] d{network.block_depth}"


def million(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


# --- settings, running, reporting ---------------------------------------------------------------
def parse_settings(argv: Sequence[str] | None, description: str) -> Settings:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few iterations (smoke test, < 60 s on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all; 1 with --quick)")
    parser.add_argument("--window", type=float, default=None, help="seconds per timed window")
    parser.add_argument("--windows", type=int, default=None, help="timed windows per case (median reported)")
    parser.add_argument("--curve-steps", type=int, default=None, help="steps of the loss-curve check")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; aot_eager with --quick on a CPU, where "
                             "Inductor's C++ builds take minutes)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for every compiled case, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--only", nargs="+", default=(), help="run only cases whose label contains one of these")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads or (args.quick and device.type == "cpu"):
        # --quick's tiny tensors gain nothing from more threads, and on a busy machine every
        # OpenMP region waits for whichever thread the scheduler has parked
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    quick = args.quick
    backend = args.compile_backend or ("aot_eager" if quick and device.type == "cpu" else "inductor")
    return Settings(device=device, quick=quick, compile_backend=backend,
                    warmup_s=0.0 if quick else 0.3,
                    window_s=args.window if args.window is not None else (0.05 if quick else 1.0),
                    windows=args.windows or (2 if quick else 3),
                    curve_steps=args.curve_steps or (20 if quick else 1000),
                    compile_mode=args.compile_mode, only=tuple(args.only))


PEER_PACKAGES = ("diffusers", "denoising_diffusion_pytorch")  # the peers bench/peers.py wraps


def peer_versions() -> dict[str, str]:
    """Installed version of each peer package (or "not installed")."""
    import importlib.metadata

    out = {}
    for name in PEER_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment(settings: Settings) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(settings.device),
           "cpu": _cpu_model(), "threads": torch.get_num_threads(), "quick": settings.quick,
           "timing": f"median of {settings.windows} windows of >= {settings.window_s} s",
           "compile_backend": settings.compile_backend, **peer_versions()}
    if settings.cuda:
        env.update(gpu=torch.cuda.get_device_name(settings.device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_cases(cases: Iterable[Case]) -> list[Row]:
    rows = []
    for case in cases:
        log(f"{case.section} | {case.label} ...")
        try:
            row = case.run()
        except Unavailable as e:
            row = Row(note=f"unavailable: {e}")
        except Exception as e:  # noqa: BLE001 - one broken case must not lose the others' figures
            traceback.print_exc()
            row = Row(note=f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160])
        finally:
            release_memory()
        row = dataclasses.replace(row, section=case.section, case=case.label)
        rows.append(row)
        log(f"  -> {_cells(row)[4] or '-'} images/s  {row.note}")
    return rows


def _cells(row: Row, show_mfu: bool = True) -> list[str]:
    ips = row.images_per_s
    ips = "" if ips is None else f"{ips:,.0f}" if ips >= 100 else f"{ips:.2f}"
    gflop = "" if row.gflop_per_image is None else f"{row.gflop_per_image:.2f}"
    mfu = "" if row.mfu is None or not show_mfu else f"{100 * row.mfu:.1f}%"
    return [row.section, row.case, million(row.params), gflop, ips, mfu, row.note.replace("|", "/")]


def markdown_table(rows: Sequence[Row], show_mfu: bool = True) -> str:
    """The table; MFU is against the H100 peak, so it is left blank for a CPU run."""
    header = ["section", "case", "params", "fwd GFLOP/img", "images/s", "MFU", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(r, show_mfu)) + " |" for r in rows]
    return "\n".join(lines)


def main(suites: Sequence[Callable[[Settings], list[Case]]], argv: Sequence[str] | None = None,
         description: str = "diffusion-explorer benchmarks") -> None:
    """Run the cases of every suite in this process and print one table."""
    settings = parse_settings(argv, description)
    if settings.compile_backend != "inductor" or settings.compile_mode:
        # for every torch.compile call (peers, sampling); training.Trainer passes its mode explicitly
        # (RunOptions.compile_mode, which overrides this partial's), so bench_train hands it over too
        torch.compile = functools.partial(torch.compile, backend=settings.compile_backend, mode=settings.compile_mode)
    if settings.cuda:  # the project's CUDA defaults (training.Trainer sets the same)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = environment(settings)
    if settings.compile_mode:
        env["compile_mode"] = settings.compile_mode
    log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    for suite in suites:
        cases = suite(settings)
        if settings.only:
            cases = [c for c in cases if any(o in c.label for o in settings.only)]
        rows += run_cases(cases)
    table = markdown_table(rows, show_mfu=settings.cuda)
    print(f"\n## Benchmarks ({env.get('gpu', env['cpu'])}, torch {env['torch']}"
          f"{', quick' if settings.quick else ''}{f', compile mode {settings.compile_mode}' if settings.compile_mode else ''})\n\n{table}\n\nMFU = passes x forward FLOPs x images/s / "
          f"{PEAK_FLOPS / 1e12:.0f}e12 (passes: 3 for training, the step count for sampling)", flush=True)
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "bench.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows_json = [dict(dataclasses.asdict(r), mfu=r.mfu) for r in rows]
        path.write_text(json.dumps({"environment": env, "rows": rows_json}, indent=1, default=str))
        log(f"wrote {path}")
    log(f"done in {time.perf_counter() - _START:.0f} s")
    sys.stdout.flush()
