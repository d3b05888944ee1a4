"""The Streamlit app, page by page, with ``streamlit.testing.v1.AppTest`` on tiny checkpoints made
by the tests (``$DIFFUSION_EXPLORER_CHECKPOINTS`` points the app at a temporary folder).

Displayed images are read back from Streamlit's in-memory media store and compared, pixel for
pixel, with what the core computes for the same seeds and settings."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint, random_images  # noqa: E402

from diffusion_core import generate as G  # noqa: E402
from diffusion_core.checkpoint import load_checkpoint  # noqa: E402
from diffusion_core.data import decode_image  # noqa: E402
from diffusion_core.images import make_grid, png_bytes  # noqa: E402
from diffusion_core.samplers import SamplerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["home", "experiments", "sample", "trajectory", "interpolation", "compare", "live"]


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads
    per process can be many times slower than one; the app's own setting is restored after."""
    from explorer_ui import compute

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(compute, "_threads", 1)  # configure_torch() then leaves it alone
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def no_results(monkeypatch, tmp_path):
    """The Experiments table lists only the test's checkpoints, not the repo's ``results/descriptions/``
    (``test_catalog_results.py`` covers those rows)."""
    from explorer_ui import catalog

    monkeypatch.setattr(catalog, "RESULTS_FOLDER", tmp_path / "no-results")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two tiny checkpoints (different weights), one with a loss log and a measured FID."""
    ck = tmp_path / "checkpoints"
    make_tiny_checkpoint(ck, "tiny_a", seed=0, metrics={"fid": 123.4, "kid": 0.1})
    make_tiny_checkpoint(ck, "tiny_b", seed=1)
    with open(ck / "tiny_a.log.jsonl", "w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"step": step, "epoch": step / 5, "loss": 1.0 / step, "images_per_s": 10.0}) + "\n")
    return ck


@pytest.fixture
def media(monkeypatch) -> dict[str, bytes]:
    """Bytes of every media file the app stores, by file id (the last part of an image's URL)."""
    store: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        store[file_id] = path_or_data if isinstance(path_or_data, bytes) else Path(path_or_data).read_bytes()
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return store


def open_app(monkeypatch, folder: Path, page: str = "experiments") -> AppTest:
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    if page != "home":
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def pixels(media: dict[str, bytes], element, k: int = 0) -> np.ndarray:
    file_id = element.value[k].rsplit("/", 1)[-1].split(".")[0]
    return np.asarray(Image.open(io.BytesIO(media[file_id])).convert("RGB"))


def assert_shows(displayed: np.ndarray, expected: np.ndarray) -> None:
    """``displayed`` is ``expected`` upscaled by a whole factor (nearest neighbour)."""
    f = displayed.shape[0] // expected.shape[0]
    assert f >= 1 and displayed.shape == (expected.shape[0] * f, expected.shape[1] * f, 3), \
        (displayed.shape, expected.shape)
    np.testing.assert_array_equal(displayed, expected.repeat(f, 0).repeat(f, 1))


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# ------------------------------------------------------------------------------------- every page
@pytest.mark.parametrize("page", PAGES)
def test_page_launches(monkeypatch, folder, page):
    at = open_app(monkeypatch, folder, page)
    clean(at)
    assert at.title[0].value == ("diffusion-explorer" if page == "home" else page.capitalize())
    if page == "home":
        assert "The best model here: tiny_a" in [h.value for h in at.subheader]
    elif page == "experiments":
        assert len(at.dataframe) == 1
    else:
        assert len(at.image) >= 1


@pytest.mark.parametrize("page", PAGES)
def test_empty_folder_explains_how_to_make_a_checkpoint(monkeypatch, tmp_path, page):
    at = open_app(monkeypatch, tmp_path / "does-not-exist" if page == "live" else tmp_path, page)
    assert not at.exception
    assert any("python -m diffusion_core train experiments/ddim_01.toml" in c.value for c in at.code)
    assert any("export runs/ddim_01 checkpoints/ddim_01" in c.value for c in at.code)


# ------------------------------------------------------------------------------------ bad folders
def test_corrupt_checkpoints_listed_as_unusable_while_good_one_works(monkeypatch, tmp_path, media):
    ck = tmp_path / "ck"
    good = make_tiny_checkpoint(ck, "good")
    (ck / "broken.json").write_text("{ not json")
    (ck / "foreign.json").write_text(json.dumps({"hello": "world"}))
    desc = json.loads(good.read_text())
    (ck / "garbage.safetensors").write_bytes(b"\x00" * 100)  # weights that are not safetensors
    (ck / "garbage.json").write_text(json.dumps(dict(desc, name="garbage", weights_files=["garbage.safetensors"])))
    shutil.copy(ck / "good.safetensors", ck / "mismatch.safetensors")  # weights of another network
    other = dict(desc, name="mismatch", weights_files=["mismatch.safetensors"])
    other["experiment"] = dict(desc["experiment"], network=dict(desc["experiment"]["network"], widths=[8, 24]))
    (ck / "mismatch.json").write_text(json.dumps(other))
    (ck / "stray.safetensors").write_bytes(b"\x01" * 10)

    at = open_app(monkeypatch, ck)
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "broken" in warnings and "not valid JSON" in warnings
    assert "foreign" in warnings and "not a diffusion-explorer checkpoint" in warnings
    assert "garbage" in warnings and "not a readable safetensors file" in warnings
    assert "mismatch" in warnings and "description implies" in warnings
    assert "stray" in warnings and "has no description" in warnings
    table = at.dataframe[0].value
    assert list(table["name"]) == ["good"]

    at.switch_page("app_pages/sample.py").run()
    clean(at)
    assert at.selectbox(key="sample_checkpoint").options == ["good"]
    assert pixels(media, at.image[0]).size > 0


def test_checkpoint_failing_to_load_is_an_error_box(monkeypatch, tmp_path, media):
    """Weights whose headers look right but hold NaN: listed, then refused by load_checkpoint."""
    from safetensors.torch import load_file, save_file

    ck = tmp_path / "ck"
    make_tiny_checkpoint(ck, "a_nan")
    make_tiny_checkpoint(ck, "good")
    weights = load_file(ck / "a_nan.safetensors")
    weights["head.weight"][:] = float("nan")
    save_file(weights, ck / "a_nan.safetensors")
    at = open_app(monkeypatch, ck, "sample")
    assert not at.exception and len(at.image) == 0
    assert "Loading a_nan" in at.error[0].value and "NaN" in at.error[0].value
    at.selectbox(key="sample_checkpoint").set_value("good").run()
    clean(at)
    assert len(at.image) == 1


def test_bad_extra_folder_is_a_message(monkeypatch, folder):
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["extra_folder"] = str(folder / "nope")
    at.run()
    at.switch_page("app_pages/experiments.py").run()
    assert not at.exception
    assert any("nope is not a folder" in w.value for w in at.sidebar.warning)
    assert len(at.dataframe[0].value) == 2  # the default folder still listed


# ------------------------------------------------------------------------------------- behaviours
def test_experiments_table_charts_and_preview(monkeypatch, folder, media):
    shipped = random_images(1, 40, seed=5)[0]  # a sample grid shipped as results/samples/NAME.png
    (folder.parent / "results" / "samples").mkdir(parents=True)
    Image.fromarray(shipped).save(folder.parent / "results" / "samples" / "tiny_b.png")
    at = open_app(monkeypatch, folder)
    clean(at)
    table = at.dataframe[0].value
    assert list(table["name"]) == ["tiny_a", "tiny_b"]
    assert table.loc[0, "FID"] == pytest.approx(123.4) and np.isnan(table.loc[1, "FID"])
    assert list(table["image size"]) == [16, 16] and list(table["widths"]) == ["8-16", "8-16"]
    assert len(at.get("plotly_chart")) == 2  # FID and loss
    assert len(at.image) == 1 and "preview_tiny_b" not in [b.key for b in at.button]
    np.testing.assert_array_equal(pixels(media, at.image[0]), shipped)
    at.button(key="preview_tiny_a").click().run()
    clean(at)
    model = load_checkpoint(folder / "tiny_a.json")
    expected = make_grid(G.generate(model, [0, 1, 2, 3], SamplerConfig("ddim", 10)), cols=2)
    assert_shows(pixels(media, at.image[0]), expected)
    at.run()  # the preview stays
    assert len(at.image) == 2


def test_sample_grid_seeds_and_limits(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "sample")
    clean(at)
    assert at.number_input(key="sample_steps").value == 20 and at.number_input(key="sample_count").value == 4
    model = load_checkpoint(folder / "tiny_a.json")
    first = pixels(media, at.image[0])
    assert_shows(first, make_grid(G.generate(model, [0, 1, 2, 3], SamplerConfig("ddim", 20)), cols=4))
    assert at.get("download_button")

    at.number_input(key="sample_seed").set_value(7)
    at.number_input(key="sample_count").set_value(6)
    at.number_input(key="sample_cols").set_value(3).run()
    clean(at)
    shown = pixels(media, at.image[0])
    assert_shows(shown, make_grid(G.generate(model, range(7, 13), SamplerConfig("ddim", 20)), cols=3))

    at.selectbox(key="sample_sampler").set_value("ddpm")
    at.number_input(key="sample_steps").set_value(10).run()
    clean(at)
    assert_shows(pixels(media, at.image[0]),
                 make_grid(G.generate(model, range(7, 13), SamplerConfig("ddpm", 10)), cols=3))

    for steps, message in [(0, "positive integer"), (1001, "beyond this model's schedule")]:
        at.number_input(key="sample_steps").set_value(steps).run()
        assert not at.exception and len(at.image) == 0
        assert message in at.error[0].value
    at.number_input(key="sample_steps").set_value(5)
    at.number_input(key="sample_count").set_value(300).run()
    assert not at.exception and "more than the 256" in at.error[0].value


def test_sampler_boxes_offer_every_registered_sampler(monkeypatch, folder, media):
    """A sampler added to the registry appears in the app with its label, its step limit and no
    eta; only deterministic ones are offered for interpolation."""
    import dataclasses

    from diffusion_core import samplers

    copy = dataclasses.replace(samplers.REGISTRY["dpmpp_2m"], name="copy_2m", label="Copy of 2M",
                               summary="the same steps, at most 7", max_steps=lambda schedule: 7)
    monkeypatch.setitem(samplers.REGISTRY, "copy_2m", copy)
    at = open_app(monkeypatch, folder, "sample")
    clean(at)
    assert at.selectbox(key="sample_sampler").options == ["DDPM (ancestral)", "DDIM", "DPM-Solver++(2M)", "Copy of 2M"]
    at.selectbox(key="sample_sampler").set_value("copy_2m")
    at.number_input(key="sample_steps").set_value(5).run()
    clean(at)
    assert at.slider(key="sample_eta").disabled and "1 to 7 for this model" in at.number_input(key="sample_steps").help
    model = load_checkpoint(folder / "tiny_a.json")
    expected = make_grid(G.generate(model, [0, 1, 2, 3], SamplerConfig("dpmpp_2m", 5)), cols=4)
    assert_shows(pixels(media, at.image[0]), expected)
    at.number_input(key="sample_steps").set_value(8).run()
    assert not at.exception and "8 steps is beyond this model's schedule: choose 1 to 7" in at.error[0].value

    at.switch_page("app_pages/interpolation.py").run()
    clean(at)
    assert at.selectbox(key="interp_sampler").options == ["DDIM", "DPM-Solver++(2M)", "Copy of 2M"]


def test_unexpected_error_is_a_short_message_and_a_logged_traceback(monkeypatch, folder, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(G, "generate", broken)
    at = open_app(monkeypatch, folder, "sample")
    assert not at.exception and len(at.image) == 0
    assert at.error[0].value == "Sampling failed unexpectedly (RuntimeError). The details are in the server log."
    assert "Traceback" in caplog.text and "boom" in caplog.text


def test_trajectory_scrubs_without_rerunning_the_model(monkeypatch, folder, media):
    calls = []
    real = G.trajectory

    def counting(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(G, "trajectory", counting)
    at = open_app(monkeypatch, folder, "trajectory")
    clean(at)
    assert len(calls) == 1
    traj = calls[0]
    steps = at.number_input(key="traj_steps").value
    assert len(traj.pred_x0) == steps == 50 and at.slider(key="traj_step").max == steps
    assert_shows(pixels(media, at.image[0]), traj.x_t[steps])  # opens on the finished sample

    for i in (0, 3, 17, steps - 1):
        at.slider(key="traj_step").set_value(i).run()
        clean(at)
        assert_shows(pixels(media, at.image[0]), traj.x_t[i])
        assert_shows(pixels(media, at.image[1]), traj.pred_x0[i])
    assert len(calls) == 1  # scrubbing read the cache
    model = load_checkpoint(folder / "tiny_a.json")
    np.testing.assert_array_equal(traj.x_t[-1], G.generate(model, [0], SamplerConfig("ddim", 50))[0])

    at.number_input(key="traj_seed").set_value(5).run()
    clean(at)
    assert len(calls) == 2 and not np.array_equal(calls[1].x_t[0], traj.x_t[0])
    gif = at.get("download_button")
    assert gif


def test_interpolation_strips_seeds_and_uploads(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "interpolation")
    clean(at)
    assert len(at.image) == 4  # two animations, two strips
    frames = at.number_input(key="interp_frames").value
    model = load_checkpoint(folder / "tiny_a.json")
    config = SamplerConfig("ddim", at.number_input(key="interp_steps").value)
    slerp = G.interpolation_frames(model, [3, 17], frames, "slerp", config)
    lerp = G.interpolation_frames(model, [3, 17], frames, "lerp", config)
    assert_shows(pixels(media, at.image[1]), make_grid(slerp, cols=frames))
    assert_shows(pixels(media, at.image[3]), make_grid(lerp, cols=frames))
    gif = Image.open(io.BytesIO(media[at.image[0].value[0].rsplit("/", 1)[-1].split(".")[0]]))
    assert gif.format == "GIF" and gif.n_frames == frames

    at.text_input(key="interp_seeds").set_value("3, 17, 42")
    at.number_input(key="interp_frames").set_value(5).run()
    clean(at)
    strip = pixels(media, at.image[1])
    assert_shows(strip, make_grid(G.interpolation_frames(model, [3, 17, 42], 5, "slerp", config), cols=5))

    for text, message in [("3, x", "is not a seed"), ("3", "at least two seeds"), ("", "type some seeds")]:
        at.text_input(key="interp_seeds").set_value(text).run()
        assert not at.exception and message in at.error[0].value

    at.text_input(key="interp_seeds").set_value("3, 17").run()
    at.file_uploader(key="interp_upload").set_value([("a.png", b"hello", "image/png"),
                                                     ("b.png", png_bytes(random_images(1, 16)[0]), "image/png")]).run()
    assert not at.exception and "a.png: not a readable image" in at.error[0].value
    assert "BytesIO" not in at.error[0].value
    tiff = io.BytesIO()
    Image.fromarray(random_images(1, 16)[0]).save(tiff, "TIFF")  # Pillow reads TIFF, uploads do not: by content
    at.file_uploader(key="interp_upload").set_value([("a.png", tiff.getvalue(), "image/png"),
                                                     ("b.png", png_bytes(random_images(1, 16)[0]), "image/png")]).run()
    assert not at.exception and "a.png: not a readable image: not a JPEG, PNG or WebP file" in at.error[0].value

    pics = random_images(2, 32, seed=3)
    at.file_uploader(key="interp_upload").set_value([(f"{i}.png", png_bytes(p), "image/png")
                                                     for i, p in enumerate(pics)]).run()
    clean(at)
    assert len(at.image) == 5  # originals and reconstructions, then the four interpolations
    originals = np.stack([decode_image(png_bytes(p), 16) for p in pics])
    _, recon = G.invert(model, originals, config.num_steps)
    assert_shows(pixels(media, at.image[0]), make_grid(np.concatenate([originals, recon]), cols=2))


def test_compare_side_by_side_and_step_sweep(monkeypatch, folder, media):
    make_tiny_checkpoint(folder, "tiny_c", image_size=32, seed=2)
    at = open_app(monkeypatch, folder, "compare")
    clean(at)
    assert at.multiselect(key="cmp_checkpoints").value == ["tiny_a", "tiny_b"]
    assert len(at.image) == 3  # two grids and the sweep
    a, b = pixels(media, at.image[0]), pixels(media, at.image[1])
    assert a.shape == b.shape and not np.array_equal(a, b)

    at.multiselect(key="cmp_checkpoints").set_value(["tiny_a", "tiny_b", "tiny_c"]).run()
    clean(at)
    steps = at.number_input(key="cmp_steps").value
    big = load_checkpoint(folder / "tiny_c.json")
    shown = pixels(media, at.image[2])
    assert_shows(shown, make_grid(G.generate(big, [0, 1, 2, 3], SamplerConfig("ddim", steps)), cols=2))

    sweep = at.multiselect(key="sweep_steps").value
    assert sweep == [5, 10, 20, 50, 100]
    at.multiselect(key="sweep_steps").set_value([5, 10])
    at.number_input(key="sweep_count").set_value(2).run()
    clean(at)
    grid = pixels(media, at.image[3])
    assert grid.shape[0] > 2 * 96 and grid.shape[1] > 2 * 96  # two rows, two labelled columns
    at.multiselect(key="sweep_steps").set_value([]).run()
    assert "choose at least one step count" in at.error[0].value


def test_live_runs_stops_and_restarts(monkeypatch, folder, media):
    from explorer_ui import plans

    monkeypatch.setattr(plans, "LIVE_SLICE_SECONDS", 600.0)  # the whole run in the first tick, however busy the machine
    at = open_app(monkeypatch, folder, "live")
    clean(at)
    steps = at.number_input(key="live_steps").value
    assert any(f"Done: step {steps} of {steps}" in c.value for c in at.caption)
    model = load_checkpoint(folder / "tiny_a.json")
    final = make_grid(G.generate(model, [0, 1, 2, 3], SamplerConfig("ddim", steps)), cols=2)
    assert_shows(pixels(media, at.image[1]), final)

    at.button(key="live_stop").click().run()  # a stop leaves the page usable, showing the last frames
    clean(at)
    assert len(at.image) == 2 and at.session_state["live_stop_requested"]

    at.number_input(key="live_seed").set_value(9)
    at.button(key="live_start").click().run()
    clean(at)
    final = make_grid(G.generate(model, [9, 10, 11, 12], SamplerConfig("ddim", steps)), cols=2)
    assert_shows(pixels(media, at.image[1]), final)


def test_live_computes_one_slice_per_tick_and_keeps_the_run_between_ticks(monkeypatch, folder, media):
    """A slice of no time: Start computes the first step; each tick of the Live fragment (here each
    run of the page) draws the newest step, then computes one more; the run waits in the session
    between ticks; Stop ends it there, shows the newest step, and nothing advances."""
    from explorer_ui import plans

    monkeypatch.setattr(plans, "LIVE_SLICE_SECONDS", 0.0)
    at = open_app(monkeypatch, folder, "live")
    clean(at)
    steps = at.number_input(key="live_steps").value
    assert steps > 3 and any(f"Running: step 1 of {steps}" in c.value for c in at.caption)
    at.run()
    clean(at)
    assert any(f"Running: step 2 of {steps}" in c.value for c in at.caption)
    assert at.get("progress")[0].proto.value == round(100 * 2 / steps)
    model = load_checkpoint(folder / "tiny_a.json")
    second, third = list(itertools.islice(G.step_states(model, [0, 1, 2, 3], SamplerConfig("ddim", steps)), 3))[1:]
    assert_shows(pixels(media, at.image[1]), make_grid(G.latent_to_pixels(model, second.x_next), cols=2))

    at.button(key="live_stop").click().run()  # the third step was computed after the second was drawn
    clean(at)
    assert "live_run" not in at.session_state and not at.get("progress")
    assert any(f"Stopped at step 3 of {steps}" in c.value for c in at.caption)
    at.run()
    assert any(f"Stopped at step 3 of {steps}" in c.value for c in at.caption)
    assert_shows(pixels(media, at.image[1]), make_grid(G.latent_to_pixels(model, third.x_next), cols=2))


def test_live_error_in_a_later_slice_ends_the_run_and_is_shown_with_the_last_frame(monkeypatch, folder):
    from explorer_ui import cache, plans

    monkeypatch.setattr(plans, "LIVE_SLICE_SECONDS", 0.0)
    real = cache.live_steps

    def failing(request, job=None):
        steps = real(request, job)
        yield next(steps)
        steps.close()
        raise ValueError("the device went away")

    monkeypatch.setattr(cache, "live_steps", failing)
    at = open_app(monkeypatch, folder, "live")  # Start's slice makes step 1; the tick's slice fails
    assert not at.exception and "live_run" not in at.session_state
    assert [e.value for e in at.error] == ["Live sampling: the device went away"]
    assert any("Stopped at step 1 of" in c.value for c in at.caption) and len(at.image) == 2


def test_live_stops_when_the_visitor_has_left(monkeypatch, folder):
    from explorer_ui import widgets

    monkeypatch.setattr(widgets, "_visitor_present", lambda: lambda: False)
    at = open_app(monkeypatch, folder, "live")
    clean(at)
    assert "live_run" not in at.session_state and not at.image
    assert any("Press Start" in c.value for c in at.caption)


def test_locked_server_hides_the_folder_input(tmp_path, monkeypatch):
    """DIFFUSION_EXPLORER_LOCK_FOLDERS=1: visitors of a shared server cannot browse its disk."""
    from explorer_ui import widgets

    monkeypatch.setenv("DIFFUSION_EXPLORER_LOCK_FOLDERS", "1")
    assert not widgets.folder_input_allowed()
    monkeypatch.setenv("DIFFUSION_EXPLORER_LOCK_FOLDERS", "0")
    assert widgets.folder_input_allowed()


def test_table_shows_protocol_fid_or_latest_evaluation(tmp_path):
    """The Experiments table shows the protocol FID, or else the latest evaluation with its N."""
    from explorer_ui import catalog

    path = make_tiny_checkpoint(tmp_path, "evaluated", metrics={"evaluations": [
        {"fid": 120.0, "kid": 0.2, "num_samples": 100}, {"fid": 99.4, "kid": 0.098, "num_samples": 1000}]})
    row = catalog.table_row(catalog.scan(tmp_path)[0])
    assert (row["FID"], row["KID"], row["FID samples"]) == (99.4, 0.098, 1000)
    path.write_text(path.read_text().replace('"evaluations"', '"fid": 12.5, "num_samples": 2911, "evaluations"'))
    row = catalog.table_row(catalog.scan(tmp_path)[0])
    assert (row["FID"], row["FID samples"]) == (12.5, 2911)


# ---------------------------------------------------------------------------------- first paint
FIRST_PAINT = r"""
import importlib.abc, json, os, sys

events = []  # (what, detail) in the order they happened


class WatchTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in [e[0] for e in events]:
            events.append(("torch", os.environ.get("OMP_WAIT_POLICY")))
        return None


sys.meta_path.insert(0, WatchTorch())
import streamlit as st
from streamlit.testing.v1 import AppTest

for name in ("navigation", "title"):
    def wrapped(*args, _real=getattr(st, name), _name=name, **kwargs):
        events.append((_name, "torch" in sys.modules))
        return _real(*args, **kwargs)
    setattr(st, name, wrapped)
at = AppTest.from_file(sys.argv[1], default_timeout=300).run()
print(json.dumps({"events": events, "titles": [t.value for t in at.title],
                  "exceptions": [e.value for e in at.exception]}))
"""


def test_navigation_and_title_come_before_torch(tmp_path):
    """The first paint: app.py shows the page list and the page's title before anything imports
    torch (seconds on a loaded machine), and torch then loads with the app's thread policy set."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(DIFFUSION_EXPLORER_CHECKPOINTS=str(tmp_path), PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", FIRST_PAINT, str(ROOT / "app.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["exceptions"] == [] and found["titles"] == ["diffusion-explorer"]
    # torch did load (the watch works), after the navigation and the title, with idle threads asleep
    assert found["events"] == [["navigation", False], ["title", False], ["torch", "PASSIVE"]], found["events"]
