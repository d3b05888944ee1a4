"""The shared server under load: ``streamlit run app.py`` on loopback over tiny checkpoints made
in a temporary folder, and N concurrent headless-Chromium sessions (one browser, a context each)
over the Sample, Trajectory, Interpolation, Live and Branch pages, each with its own seed.

Session 0 leaves: it asks the Sample page for a long grid (256 images x 1000 DDIM steps, behind
the page's Generate button) and, once the job has made steps, lets the other sessions start and
closes its page 5 s later, while they load and compute. Every other session waits until its page shows the images that ``diffusion_core`` computes in this
process for the same checkpoint, seeds, sampler and steps (compared pixel for pixel with the PNG
the page shows, after undoing the page's whole-factor upscaling). Then:

- the long job must stop: once the other sessions are done, the server's CPU time (utime + stime
  of /proc/PID/stat) must stop growing; afterwards the leave is repeated alone, to measure how
  many seconds after the page closes the server goes idle;
- the figures: wall time per session (from opening its page to its images being correct), the
  server's peak resident memory (VmHWM of /proc/PID/status), errors (an exception or error box on
  a page, images that differ from the core's, a timeout, a traceback in the server's log).

Needs Linux (/proc), ``playwright`` and a Chromium at /usr/bin/chromium (or ``$CHROMIUM``);
Playwright's own browser download is not used. Run from the repository root::

    .venv/bin/python -m bench.load_app --sessions 16 --json load.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = ("sample", "trajectory", "interpolation", "live", "branch")
SAMPLER, STEPS = "ddim", 10  # every session's sampler and steps (through the URL's shared settings)
LONG_IMAGES, LONG_STEPS = 256, 1000  # the job that session 0 starts and leaves
LEAVE_AFTER_S = 5.0  # session 0 closes its page this long after its job started and the others began
FRAMES = 6  # the Interpolation page's default frame count
BRANCHES = (("ddpm", 0.0), ("ddim", 1.0))  # the Branch page's default branches (sampler, eta), from its middle step
IDLE_CPU_S = 0.05  # CPU seconds per IDLE_WINDOW_S below which the server counts as idle
IDLE_WINDOW_S = 1.0
SHOTS: Path | None = None  # --shots: a screenshot of every failed session goes here
IDLE_SCRIPT = '[data-testid="stApp"][data-test-script-state="notRunning"]'


# ------------------------------------------------------------------------------------------ server
def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class Server:
    """A Streamlit server on a free loopback port over the checkpoints of ``folder``."""

    def __init__(self, folder: Path, log_path: Path, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, DIFFUSION_EXPLORER_CHECKPOINTS=str(folder), DIFFUSION_EXPLORER_THREADS=str(threads))
        env.pop("DIFFUSION_EXPLORER_MAX_GFLOP", None)  # the long job must be allowed to start
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{self.log()[-3000:]}")
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_idle(pid: int, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` (a time.time()) to the start of the first IDLE_WINDOW_S in which the
    process used less than IDLE_CPU_S of CPU; None if it stays busy for ``timeout`` seconds."""
    samples = [(time.time(), cpu_seconds(pid))]
    while time.time() - since < timeout:
        time.sleep(0.1)
        samples.append((time.time(), cpu_seconds(pid)))
        now, cpu = samples[-1]
        for t, c in samples:
            if now - t < IDLE_WINDOW_S:
                break
            if now - t <= IDLE_WINDOW_S + 0.25 and cpu - c < IDLE_CPU_S:
                return max(0.0, t - since)
    return None


# ----------------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class Plan:
    index: int
    page: str  # one of PAGES, or "leave"
    seed: int

    def url(self, base: str) -> str:
        page = "sample" if self.page == "leave" else self.page
        return f"{base}/{page}?sampler={SAMPLER}&steps={STEPS}&seed={self.seed}"


def plans_for(sessions: int) -> list[Plan]:
    """Session 0 leaves; the others cycle over the pages, each with seeds of its own."""
    return [Plan(0, "leave", 9000)] + [Plan(i, PAGES[(i - 1) % len(PAGES)], 100 * i) for i in range(1, sessions)]


def expected_images(plan: Plan, model, count: int) -> list[np.ndarray]:
    """The pictures the page must show, from the core (before the page's upscaling)."""
    from diffusion_core import generate as G
    from diffusion_core import views as V
    from diffusion_core.images import make_grid
    from diffusion_core.samplers import SamplerConfig

    config = SamplerConfig(SAMPLER, STEPS)
    seeds = list(range(plan.seed, plan.seed + count))
    if plan.page == "sample":
        return [make_grid(G.generate(model, seeds, config), cols=min(count, 4))]
    if plan.page == "live":
        return [make_grid(G.generate(model, seeds, config), cols=math.ceil(math.sqrt(count)))]
    if plan.page == "trajectory":
        return [G.generate(model, [plan.seed], config)[0]]
    if plan.page == "interpolation":
        return [make_grid(G.interpolation_frames(model, [plan.seed, plan.seed + 1], FRAMES, method, config),
                          cols=FRAMES) for method in ("slerp", "lerp")]
    if plan.page == "branch":  # the original's sample and each branch's (noise seeds seed + 1, seed + 2, ...)
        branches = [V.Branch(name, eta, plan.seed + i + 1) for i, (name, eta) in enumerate(BRANCHES)]
        pics = V.branch(model, plan.seed, config, STEPS // 2, branches)
        return [pics.original[-1], *pics.branches[:, -1]]
    return []


def shows(picture: np.ndarray, expected: np.ndarray) -> bool:
    """Whether ``picture`` is ``expected`` upscaled by a whole factor (nearest neighbour)."""
    h, w = expected.shape[:2]
    if picture.ndim != 3 or picture.shape[0] % h or picture.shape[1] % w:
        return False
    f = picture.shape[0] // h
    if f < 1 or picture.shape[1] != w * f:
        return False
    return np.array_equal(picture[::f, ::f], expected) and np.array_equal(
        picture, expected.repeat(f, axis=0).repeat(f, axis=1))


# ---------------------------------------------------------------------------------------- sessions
@dataclass
class Outcome:
    index: int
    page: str
    seed: int
    seconds: float | None = None
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    closed_at: float | None = None  # the leaver: time.time() when its page closed
    finished_at: float | None = None  # time.time() when its images were right (or it failed)


async def page_errors(page) -> list[str]:
    found = []
    if await page.locator('[data-testid="stException"]').count():
        found.append("exception box: " + " ".join(await page.locator('[data-testid="stException"]').all_inner_texts())[:300])
    found += ["error box: " + t[:300] for t in await page.locator('[data-testid="stAlertContentError"]').all_inner_texts()]
    return found


async def settle(page, timeout_ms: int) -> None:
    for _ in range(2):
        await page.wait_for_timeout(300)
        await page.wait_for_selector(IDLE_SCRIPT, timeout=timeout_ms)


async def shown_pictures(page, seen: dict[str, np.ndarray | None]) -> list[np.ndarray]:
    """Every PNG picture in the page's main area (fetched once per URL)."""
    srcs = await page.eval_on_selector_all('[data-testid="stMain"] img', "els => els.map(e => e.src)")
    out = []
    for src in srcs:
        if src not in seen:
            seen[src] = None
            try:
                body = await page.request.get(src)
                data = await body.body()
                if data[:8] == b"\x89PNG\r\n\x1a\n":
                    seen[src] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            except Exception:  # a media file replaced by the next run: read the next one
                seen.pop(src, None)
        if seen.get(src) is not None:
            out.append(seen[src])
    return out


async def visit(browser, base: str, plan: Plan, expected: list[np.ndarray], timeout: float,
                start_gate: asyncio.Event | None) -> Outcome:
    outcome = Outcome(plan.index, plan.page, plan.seed)
    context = await browser.new_context(viewport={"width": 1400, "height": 1600})
    page = await context.new_page()
    page.set_default_timeout(timeout * 1000)
    t0 = time.perf_counter()
    try:
        await page.goto(plan.url(base))
        if plan.page == "leave":
            # more images first (a short job at these steps), then more steps: the Generate gate
            for label, value in (("Images", LONG_IMAGES), ("Sampling steps", LONG_STEPS)):
                await settle(page, int(timeout * 1000))
                box = page.get_by_label(label, exact=True)
                await box.fill(str(value))
                await box.press("Enter")
            await page.get_by_role("button", name="Generate", exact=True).click()
            # the job has made steps (the bar shows a percentage), so it is really running
            await page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some("
                "e => /Sampling: [1-9]\\d*%/.test(e.innerText))")
            outcome.errors += await page_errors(page)
            if start_gate is not None:  # the others start now; this page stays while they open theirs
                start_gate.set()
                await asyncio.sleep(LEAVE_AFTER_S)
            await page.close()
            outcome.closed_at = time.time()
            outcome.ok = not outcome.errors
        else:
            if plan.page == "interpolation":
                await settle(page, int(timeout * 1000))
                box = page.get_by_label("Seeds", exact=True)
                await box.fill(f"{plan.seed}, {plan.seed + 1}")
                await box.press("Enter")
            seen: dict[str, np.ndarray | None] = {}
            while True:
                errors = await page_errors(page)
                if errors:
                    outcome.errors += errors
                    break
                pictures = await shown_pictures(page, seen)
                if all(any(shows(p, e) for p in pictures) for e in expected):
                    outcome.ok = True
                    break
                if time.perf_counter() - t0 > timeout:
                    outcome.errors.append(f"timeout after {timeout:.0f} s: {len(pictures)} pictures shown, "
                                          "not the core's")
                    break
                await page.wait_for_timeout(250)
    except Exception as e:  # a Playwright timeout or a closed page: the session failed
        outcome.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    if outcome.errors and SHOTS is not None and not page.is_closed():
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"session{plan.index}_{plan.page}.png"), full_page=True)
    outcome.seconds, outcome.finished_at = time.perf_counter() - t0, time.time()
    note(f"session {plan.index} ({plan.page}): {'ok' if outcome.ok else 'FAILED'} in {outcome.seconds:.1f} s"
         + "".join(f"; {e}" for e in outcome.errors))
    await context.close()
    if start_gate is not None and not start_gate.is_set():
        start_gate.set()
    return outcome


async def drive(base: str, plans: list[Plan], expected: dict[int, list[np.ndarray]], timeout: float,
                server: Server) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            # warm-up: one visit of the home page loads the app's modules (not timed)
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(base)
            await page.get_by_role("heading", name="diffusion-explorer").wait_for(timeout=timeout * 1000)
            await context.close()

            note(f"session 0 starts its long job; then {len(plans) - 1} sessions start")
            wall0, start = time.perf_counter(), time.time()
            gate = asyncio.Event()
            leaving = asyncio.create_task(visit(browser, base, plans[0], [], timeout, gate))
            await gate.wait()
            others = await asyncio.gather(*(visit(browser, base, plan, expected.get(plan.index, []), timeout, None)
                                            for plan in plans[1:]))
            outcomes = [await leaving, *others]
            wall = time.perf_counter() - wall0
            others_done = time.time()
            idle_after_load = await asyncio.to_thread(wait_idle, server.proc.pid, others_done, 60.0)

            # the leave again, alone: seconds from closing the page to an idle server
            alone = await visit(browser, base, Plan(len(plans), "leave", 9500), [], timeout, None)
            stop_s = None
            if alone.closed_at is not None:
                stop_s = await asyncio.to_thread(wait_idle, server.proc.pid, alone.closed_at, 60.0)
            version = browser.version
        finally:
            await browser.close()
    return {"outcomes": outcomes, "alone": alone, "start": start, "wall": wall, "idle_after_load": idle_after_load,
            "stop_s": stop_s, "chromium": version}


# -------------------------------------------------------------------------------------------- main
def run(sessions: int, timeout: float, threads: int) -> dict:
    import torch

    import streamlit
    from diffusion_core.checkpoint import load_checkpoint
    from explorer_ui import plans as P
    from tests.helpers import make_tiny_checkpoint

    if sessions < 2:
        raise SystemExit("--sessions must be at least 2 (one leaves, the others compare their images)")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set $CHROMIUM)")
    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine slows the sessions
    torch.set_num_threads(threads)  # the server's thread count: the same arithmetic as its pages
    with tempfile.TemporaryDirectory(prefix="load_app_") as tmp:
        folder = Path(tmp) / "checkpoints"
        folder.mkdir()
        path = make_tiny_checkpoint(folder, "tiny", seed=0)
        model = load_checkpoint(str(path), "cpu")
        count, _ = P.default_plan(P.gflops_per_image(model.experiment.network), "cpu", threads)
        plans = plans_for(sessions)
        expected = {plan.index: expected_images(plan, model, count) for plan in plans}
        note("expected images computed; starting the server")
        server = Server(folder, Path(tmp) / "streamlit.log", threads)
        try:
            server.wait_ready()
            got = asyncio.run(drive(server.url, plans, expected, timeout, server))
            rss = peak_rss_mib(server.proc.pid)
            cpu = cpu_seconds(server.proc.pid)
        finally:
            server.stop()
        log = server.log()
    # CPU of every child reaped by now: the server, Playwright's driver and the browser it ran
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    browser_cpu = children.ru_utime + children.ru_stime - cpu
    outcomes: list[Outcome] = got["outcomes"]
    times = [o.seconds for o in outcomes if o.page != "leave" and o.seconds is not None]
    errors = [f"session {o.index} ({o.page}, seed {o.seed}): {e}" for o in outcomes + [got["alone"]] for e in o.errors]
    if "Traceback" in log:
        errors.append("server log has a traceback:\n" + log[log.index("Traceback"):][:3000])
    leaver = outcomes[0]
    return {
        "sessions": sessions,
        "pages": {page: sum(o.page == page for o in outcomes) for page in ("leave", *PAGES)},
        "sampler": SAMPLER, "steps": STEPS, "images_per_grid": count,
        "long_job": {"images": LONG_IMAGES, "steps": LONG_STEPS},
        "wall_s": round(got["wall"], 2),
        "session_s": {"median": round(statistics.median(times), 2) if times else None,
                      "max": round(max(times), 2) if times else None,
                      "each": {f"{o.index}:{o.page}": round(o.seconds, 2) for o in outcomes if o.seconds is not None}},
        "results_identical": all(o.ok for o in outcomes if o.page != "leave"),
        "errors": errors,
        "leaver_closed_after_s": None if leaver.closed_at is None else round(leaver.closed_at - got["start"], 2),
        "sessions_running_when_it_left": sum(o.page != "leave" and leaver.closed_at is not None
                                             and o.finished_at > leaver.closed_at for o in outcomes),
        "long_job_stopped": leaver.closed_at is not None and got["idle_after_load"] is not None
                            and got["alone"].closed_at is not None and got["stop_s"] is not None,
        "server_idle_after_all_left_s": None if got["idle_after_load"] is None else round(got["idle_after_load"], 2),
        "stop_after_leaving_alone_s": None if got["stop_s"] is None else round(got["stop_s"], 2),
        "peak_server_rss_mib": round(rss, 1),
        "server_cpu_s": round(cpu, 1),
        "browser_cpu_s": round(browser_cpu, 1),
        "server_threads": threads,
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_at_start, "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "streamlit": streamlit.__version__, "chromium": got["chromium"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=16, help="concurrent browser sessions, the leaver included")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a session may take")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--shots", type=Path, help="a screenshot of each failed session's page goes to this folder")
    args = parser.parse_args(argv)
    global SHOTS
    SHOTS = args.shots
    result = run(args.sessions, args.timeout, args.threads)
    s = result["session_s"]
    print(f"{result['sessions']} sessions {result['pages']}: wall {result['wall_s']} s; per session median "
          f"{s['median']} s, max {s['max']} s")
    print(f"results identical to the core's: {result['results_identical']}; errors: {len(result['errors'])}")
    for e in result["errors"]:
        print("  " + e)
    print(f"peak server RSS {result['peak_server_rss_mib']} MiB; CPU: server {result['server_cpu_s']} s, "
          f"browser {result['browser_cpu_s']} s")
    print(f"session 0 left its job after {result['leaver_closed_after_s']} s, while "
          f"{result['sessions_running_when_it_left']} other sessions were still running")
    print(f"long job stopped: {result['long_job_stopped']} (server idle {result['server_idle_after_all_left_s']} s "
          f"after every session finished or left; alone, idle {result['stop_after_leaving_alone_s']} s after the page closed)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["results_identical"] and not result["errors"] and result["long_job_stopped"] else 1


if __name__ == "__main__":
    sys.exit(main())
