"""The shared server under load (``bench/load_app.py``): the real Streamlit server on loopback,
concurrent Chromium sessions over Sample, Trajectory, Interpolation, Live and Branch, one of them
leaving a long job. Every session's images equal the core's, nothing errs, and the job left behind stops.

The browser run needs ``playwright`` and a Chromium at /usr/bin/chromium (skipped without them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import load_app

ROOT = Path(__file__).resolve().parent.parent


def test_a_picture_matches_only_its_exact_upscaling():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 256, (20, 38, 3), dtype=np.uint8)
    shown = grid.repeat(9, axis=0).repeat(9, axis=1)
    assert load_app.shows(shown, grid)
    assert load_app.shows(grid, grid)  # factor 1
    off = shown.copy()
    off[100, 200, 1] ^= 1  # one value of one upscaled pixel
    assert not load_app.shows(off, grid)
    assert not load_app.shows(shown[:, :-1], grid)  # not a whole factor
    assert not load_app.shows(grid.repeat(2, axis=0).repeat(3, axis=1), grid)  # stretched


def test_sessions_cover_every_page_and_one_leaves():
    plans = load_app.plans_for(6)
    assert [p.page for p in plans] == ["leave", "sample", "trajectory", "interpolation", "live", "branch"]
    assert len({p.seed for p in plans}) == 6
    assert plans[1].url("http://h") == f"http://h/sample?sampler=ddim&steps={load_app.STEPS}&seed=100"


@pytest.mark.slow
def test_concurrent_sessions_get_the_cores_images_and_a_job_left_behind_stops(tmp_path):
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")
    if not Path(load_app.CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {load_app.CHROMIUM} (apt-get install -y chromium)")
    out = tmp_path / "load.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "bench.load_app", "--sessions", "6", "--timeout", "120",
                          "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.exists(), run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["pages"] == {"leave": 1, "sample": 1, "trajectory": 1, "interpolation": 1, "live": 1, "branch": 1}
    assert result["errors"] == []
    assert result["results_identical"] is True
    assert result["long_job_stopped"] is True
    assert result["stop_after_leaving_alone_s"] < 5  # the page closed; the server idles within seconds
    assert result["peak_server_rss_mib"] > 0
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_idle_detector_waits_for_a_busy_process_and_not_for_an_idle_one():
    code = "import time\nend = time.time() + {}\nwhile time.time() < end: pass\ntime.sleep(30)"
    busy = subprocess.Popen([sys.executable, "-c", code.format(2.5)])
    try:
        since = time.time()
        waited = load_app.wait_idle(busy.pid, since, timeout=20)
        assert waited is not None and 1.0 < waited < 6  # busy for 2.5 s from its start, then asleep
        assert load_app.wait_idle(busy.pid, time.time(), timeout=5) < 0.5  # asleep now
    finally:
        busy.kill()
        busy.wait()
