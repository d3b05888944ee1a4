"""Sharing the device between visitors (``explorer_ui.compute``) and what the action pages show
while and after they compute: the lock taken per step and first come first served, the compute
budget, the measured speed, Stop and progress, and widgets that show the values that run.

Widget values are read as a browser shows them: a browser keeps the value it shows for a keyed
widget unless the server sends a new one (``set_value`` in the widget's message)."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint, tiny_experiment  # noqa: E402

from diffusion_core import generate as G  # noqa: E402
from diffusion_core.checkpoint import load_checkpoint  # noqa: E402
from diffusion_core.samplers import SamplerConfig  # noqa: E402
from explorer_ui import compute, plans  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
G16 = plans.gflops_per_image(tiny_experiment(image_size=16).network)


@pytest.fixture(autouse=True)
def one_thread_no_speed(monkeypatch):
    """One torch thread (tiny models) and no request budget (conftest: no speed from earlier tests)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(compute, "_threads", 1)
    monkeypatch.delenv(compute.MAX_GFLOP_ENV, raising=False)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def no_results(monkeypatch, tmp_path):
    from explorer_ui import catalog

    monkeypatch.setattr(catalog, "RESULTS_FOLDER", tmp_path / "no-results")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """Two 16 px checkpoints (tiny_a has the best FID, so pages open on it) and a 64 px one,
    ``big``, 16 times the cost; the CPU's calibrated speed is set so that the pages' defaults
    differ between them (Sample 4 images x 20 steps against 4 x 5; Trajectory 50 against 20;
    Compare 4 x 20 against 2 x 5)."""
    ck = tmp_path / "checkpoints"
    make_tiny_checkpoint(ck, "tiny_a", seed=0, metrics={"fid": 123.4})
    make_tiny_checkpoint(ck, "tiny_b", seed=1)
    make_tiny_checkpoint(ck, "big", image_size=64, seed=2)
    monkeypatch.setitem(plans.SECONDS_PER_GFLOP, "cpu", 0.005 / G16)
    return ck


def open_app(monkeypatch, folder: Path, page: str) -> AppTest:
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(widget, before):
    """What a browser shows after a run: the server's value if it sent one, else what it showed."""
    return widget.proto.value if widget.proto.set_value else before


def captions(at: AppTest) -> str:
    """Every caption of the page, of text and of images."""
    return " | ".join([c.value for c in at.caption] + [c for image in at.image for c in image.captions])


# ------------------------------------------------------------------------ what a widget shows runs
def test_sample_shows_the_steps_and_count_that_run_after_a_checkpoint_change(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "sample")
    steps, count = at.number_input(key="sample_steps"), at.number_input(key="sample_count")
    assert (steps.value, count.value) == (20, 4)
    assert "tiny_a: 4 images of 16x16, seeds 0-3, ddim 20 steps" in captions(at)
    before = {"steps": steps.value, "count": count.value}

    at.selectbox(key="sample_checkpoint").set_value("big").run()
    assert not at.exception and not at.error
    steps, count = at.number_input(key="sample_steps"), at.number_input(key="sample_count")
    assert (shown(steps, before["steps"]), shown(count, before["count"])) == (5, 4)
    assert "big: 4 images of 64x64, seeds 0-3, ddim 5 steps" in captions(at)

    at.number_input(key="sample_seed").set_value(3).run()  # an unrelated edit keeps 5 steps
    assert "big: 4 images of 64x64, seeds 3-6, ddim 5 steps" in captions(at)
    assert at.number_input(key="sample_steps").value == 5


def test_trajectory_shows_the_steps_that_run_after_a_checkpoint_change(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "trajectory")
    assert at.number_input(key="traj_steps").value == 50
    assert "finished sample after 50 steps" in captions(at)

    at.selectbox(key="traj_checkpoint").set_value("big").run()
    assert not at.exception and not at.error
    assert shown(at.number_input(key="traj_steps"), 50) == 20
    assert "finished sample after 20 steps" in captions(at)
    assert at.slider(key="traj_step").value == 20


def test_compare_shows_the_steps_and_count_that_run_after_a_checkpoint_change(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "compare")
    at.multiselect(key="cmp_checkpoints").set_value(["tiny_a", "tiny_b"]).run()
    steps, count = at.number_input(key="cmp_steps"), at.number_input(key="cmp_count")
    before = (shown(steps, steps.value), shown(count, count.value))
    assert before == (20, 4) and "Seeds 0-3, DDIM 20 steps" in captions(at)

    at.multiselect(key="cmp_checkpoints").set_value(["tiny_a", "big"]).run()
    assert not at.exception and not at.error
    steps, count = at.number_input(key="cmp_steps"), at.number_input(key="cmp_count")
    # Compare keeps its fair step count and shows fewer images when the bigger model costs more
    assert (shown(steps, before[0]), shown(count, before[1])) == (20, 1)
    assert "Seeds 0-0, DDIM 20 steps" in captions(at)


# --------------------------------------------------------------------------- gate, progress, stop
def test_gate_goes_once_the_run_starts_and_progress_and_stop_go_when_it_ends(monkeypatch, folder):
    monkeypatch.setattr(plans, "AUTO_SECONDS", 0.0)  # every action waits for its button
    at = open_app(monkeypatch, folder, "sample")
    assert len(at.image) == 0 and "press Generate to start" in at.info[0].value
    at.button(key="sample_approved_go").click().run()
    assert not at.exception and not at.error and len(at.image) == 1
    assert not [i for i in at.info if "press Generate" in i.value]
    assert not [b for b in at.button if b.key == "sample_approved_stop"]
    assert len(at.get("progress")) == 0


def test_a_job_whose_visitor_left_stops_and_waits_for_its_button(monkeypatch, folder):
    from explorer_ui import widgets

    monkeypatch.setattr(widgets, "_visitor_present", lambda: (lambda: False))
    at = open_app(monkeypatch, folder, "sample")
    assert not at.exception and len(at.image) == 0
    assert "Sampling stopped at 0%" in at.warning[0].value
    at.run()  # the next visit: the stopped request waits for Generate instead of starting again
    assert len(at.image) == 0 and at.info[0].value.startswith("Stopped. This takes about")
    monkeypatch.setattr(widgets, "_visitor_present", lambda: (lambda: True))
    at.button(key="sample_approved_go").click().run()
    assert not at.exception and len(at.image) == 1


def leaves_after_two_steps():
    """A visitor who is there for a job's first two steps (as if Stop were pressed during the third)."""
    checks = itertools.count()
    return lambda: next(checks) < 2


@pytest.mark.parametrize("page,what,cached,button", [
    ("xy_grid", "Sampling the grid", "xy_grid", "xy_approved_go"),
    ("branch", "Branching", "branch", "branch_approved_go"),
    ("neighbourhood", "Variations", "variations", "nb_var_approved_go"),
    ("geometry", "Recording the trajectories", "geometry", "geo_approved_go")])
def test_a_stopped_view_ends_at_a_step_caches_nothing_and_waits_for_its_button(monkeypatch, folder, page, what,
                                                                               cached, button):
    from explorer_ui import cache, widgets

    monkeypatch.setattr(widgets, "_visitor_present", leaves_after_two_steps)
    misses = cache.MISSES[cached]
    at = open_app(monkeypatch, folder, page)
    assert not at.exception and not at.error and len(at.image) == 0
    stopped = [w.value for w in at.warning if "stopped at" in w.value]
    assert len(stopped) == 1 and stopped[0].startswith(f"{what} stopped at ") and not stopped[0].endswith(" 0%.")
    assert not [b for b in at.button if b.key.endswith("_stop")] and len(at.get("progress")) == 0
    at.run()  # the next run: the stopped request waits for its button
    assert len(at.image) == 0 and cache.MISSES[cached] == misses + 1
    assert any(i.value.startswith("Stopped. This takes about") and "press Generate to start" in i.value
               for i in at.info)
    monkeypatch.setattr(widgets, "_visitor_present", lambda: (lambda: True))
    at.button(key=button).click().run()
    assert not at.exception and not at.error and len(at.image) >= 1
    assert cache.MISSES[cached] == misses + 2  # computed afresh: the stopped run left nothing in the cache


def test_a_stopped_inversion_keeps_its_cached_samples_and_waits_for_invert(monkeypatch, folder):
    from explorer_ui import cache, widgets

    at = open_app(monkeypatch, folder, "inversion")
    assert not at.exception and not at.error and at.get("dataframe")
    misses = dict(cache.MISSES)
    monkeypatch.setattr(widgets, "_visitor_present", leaves_after_two_steps)
    at.multiselect(key="inv_steps").set_value([5, 10]).run()  # the samples come from the cache
    assert [w.value for w in at.warning if "stopped at" in w.value][0].startswith("Inverting stopped at ")
    assert cache.MISSES["sample"] == misses["sample"] and not at.get("dataframe")
    monkeypatch.setattr(widgets, "_visitor_present", lambda: (lambda: True))
    at.run()
    assert any("press Invert to start" in i.value for i in at.info) and not at.get("dataframe")
    at.button(key="inv_approved_go").click().run()
    assert not at.exception and not at.error and len(at.get("dataframe")[0].value) == 2 * 2
    assert cache.MISSES["inversion_quality"] == misses["inversion_quality"] + 2


def test_budget_refuses_with_the_estimate_and_the_limit(monkeypatch, folder):
    monkeypatch.setenv(compute.MAX_GFLOP_ENV, "0.1")
    at = open_app(monkeypatch, folder, "sample")
    need = 4 * 20 * G16
    assert len(at.image) == 0
    assert (f"this request needs about {need:,.0f} GFLOP and this server allows 0 GFLOP per request "
            f"({compute.MAX_GFLOP_ENV})") in at.error[0].value


def test_check_budget_messages(monkeypatch):
    compute.check_budget(1e12)  # no limit set
    monkeypatch.setenv(compute.MAX_GFLOP_ENV, "1000")
    compute.check_budget(1000)
    with pytest.raises(ValueError, match=r"needs about 2,500 GFLOP and this server allows 1,000 GFLOP per request "
                                         r"\(DIFFUSION_EXPLORER_MAX_GFLOP\)"):
        compute.check_budget(2500)
    for bad in ("lots", "-5", "0", "inf", "nan"):
        monkeypatch.setenv(compute.MAX_GFLOP_ENV, bad)
        with pytest.raises(ValueError, match=f"DIFFUSION_EXPLORER_MAX_GFLOP='{bad}' is not a positive number"):
            compute.check_budget(1)


# ---------------------------------------------------------------------------------- speed estimate
def test_speed_is_a_moving_average_of_measurements_after_the_calibrated_constant():
    calibrated = plans.seconds_per_gflop("cpu", 1)
    assert compute.seconds_per_gflop("cpu") == calibrated
    assert compute.estimate_seconds(10.0, "cpu") == pytest.approx(10.0 * calibrated)
    compute.record_speed("cpu", 2.0, 10.0)  # 0.2 s per GFLOP
    assert compute.seconds_per_gflop("cpu") == pytest.approx(0.2)
    compute.record_speed("cpu", 1.0, 10.0)  # 0.1: the average moves by SPEED_WEIGHT towards it
    assert compute.seconds_per_gflop("cpu") == pytest.approx(0.7 * 0.2 + 0.3 * 0.1)
    assert compute.estimate_seconds(100.0, "cpu") == pytest.approx(100 * (0.7 * 0.2 + 0.3 * 0.1))
    assert compute.seconds_per_gflop("cuda") == plans.SECONDS_PER_GFLOP["cuda"]  # per device


def test_stepwise_measures_the_speed_and_counts_image_steps(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path, "tiny"))
    job = compute.Job(total=3 * 4)
    images = G.generate(model, [0, 1, 2], SamplerConfig("ddim", 4), drive=compute.driver("cpu", G16, job))
    assert job.done == 12 and job.fraction() == 1.0
    assert compute._speed["cpu"] > 0
    assert (images == G.generate(model, [0, 1, 2], SamplerConfig("ddim", 4))).all()  # same pixels as undriven


def test_stepwise_stops_a_job_whose_visitor_left_and_frees_the_lock(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path, "tiny"))
    job = compute.Job(total=2 * 10, alive=lambda: job.done < 6)  # leaves after 3 steps of 2 images
    with pytest.raises(compute.Stopped, match="stopped at 30%: the visitor left"):
        G.generate(model, [0, 1], SamplerConfig("ddim", 10), drive=compute.driver("cpu", G16, job))
    assert job.done == 6
    lock = compute.device_lock("cpu")
    lock.acquire()  # free again
    lock.release()


# --------------------------------------------------------------------------------------- fairness
def test_fair_lock_serves_in_arrival_order_even_against_the_releasing_thread():
    lock, order = compute.FairLock(), []
    lock.acquire()

    def worker(name: str, times: int = 1) -> None:
        for _ in range(times):
            with lock:
                order.append(name)

    threads = []
    for name, times in (("b", 2), ("c", 1), ("d", 1)):
        t = threading.Thread(target=worker, args=(name, times))
        t.start()
        threads.append(t)
        while len(lock._queue) < len(threads):  # each is queued before the next one comes
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    # b takes its second turn after c and d, who were waiting when it released
    assert order == ["b", "c", "d", "b"]


def first_step_wait(model, per_step: bool) -> tuple[float, float]:
    """Seconds a second visitor waits for the first step of a 1-image job that starts just after
    another visitor's 4-image, 200-step job (with the device lock per request, as it was, or per
    step); and the long job's own time."""
    config, gflop = SamplerConfig("ddim", 200), G16
    started, times = threading.Event(), {}

    def announce(states):
        for state in states:
            started.set()
            yield state

    def long_job() -> None:
        t0 = time.perf_counter()
        if per_step:
            G.generate(model, [0, 1, 2, 3], config, drive=lambda s: announce(compute.stepwise(s, "cpu", gflop)))
        else:
            with compute.inference("cpu"):
                started.set()
                G.generate(model, [0, 1, 2, 3], config)
        times["long"] = time.perf_counter() - t0

    t = threading.Thread(target=long_job)
    t.start()
    started.wait(10)
    t0 = time.perf_counter()
    next(compute.stepwise(G.step_states(model, [9], SamplerConfig("ddim", 20)), "cpu", gflop))
    wait = time.perf_counter() - t0
    t.join(60)
    return wait, times["long"]


def test_a_second_visitor_waits_one_step_not_a_whole_job(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path, "tiny"))
    before, long_before = first_step_wait(model, per_step=False)
    after, long_after = first_step_wait(model, per_step=True)
    print(f"\nsecond visitor's first step: {before * 1000:.0f} ms with the lock per request (long job "
          f"{long_before:.2f} s), {after * 1000:.1f} ms with the lock per step (long job {long_after:.2f} s)")
    assert before > 0.5 * long_before  # it waited for most of the long job
    assert after < before / 10


def test_a_second_visitor_waits_one_step_of_a_view_not_the_whole_view(tmp_path):
    """The views' caches drive the core step by step as well (``view_cache``): another visitor's
    first step waits for one step of a long trajectory-geometry job, not for the job."""
    from explorer_ui import cache, view_cache, view_requests
    from explorer_ui.requests import ModelRef

    ref = ModelRef(str(make_tiny_checkpoint(tmp_path, "tiny")), (str(tmp_path),), "cpu")
    model = cache.get_model(ref)
    request = view_requests.geometry(ref, model, [0, 1, 2, 3], SamplerConfig("ddim", 200))
    started, times = threading.Event(), {}
    job = compute.Job(request.evaluations, on_step=lambda job: started.set())

    def long_view() -> None:
        t0 = time.perf_counter()
        view_cache.geometry(request, job)
        times["long"] = time.perf_counter() - t0

    t = threading.Thread(target=long_view)
    t.start()
    assert started.wait(30)
    t0 = time.perf_counter()
    next(compute.stepwise(G.step_states(model, [9], SamplerConfig("ddim", 20)), "cpu", G16))
    wait = time.perf_counter() - t0
    t.join(60)
    print(f"\nsecond visitor's first step: {wait * 1000:.1f} ms during a view of {times['long']:.2f} s")
    assert job.done == request.evaluations  # every step of the view went through the lock, one at a time
    assert wait < times["long"] / 10


def test_progress_of_a_computation_is_not_replayed_from_the_cache(monkeypatch, folder):
    """The progress bar lives on the page: a cached result shown again replays none of its updates
    (a replayed update of an element outside the cached function is an error)."""
    at = open_app(monkeypatch, folder, "sample")
    first = at.image[0].value
    at.run()  # the same request: from the cache
    assert not at.exception and not at.error and len(at.image) == 1
    assert at.image[0].value == first and len(at.get("progress")) == 0


def test_live_page_keeps_to_the_budget(monkeypatch, folder):
    monkeypatch.setenv(compute.MAX_GFLOP_ENV, "0.1")
    at = open_app(monkeypatch, folder, "live")
    assert not at.exception and len(at.image) == 0
    assert "this server allows 0 GFLOP per request" in at.error[0].value
