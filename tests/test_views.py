"""The view pages (XY grid, Branch, Neighbourhood, Edit, Geometry, Inversion) with ``AppTest`` on tiny checkpoints:
what they show is compared, pixel for pixel, with the core's functions for the same settings."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint, random_images  # noqa: E402
from test_app import (assert_shows, clean, folder, media, no_results, one_thread,  # noqa: E402,F401
                      open_app, pixels)

from diffusion_core import analysis as A  # noqa: E402
from diffusion_core import edit as E  # noqa: E402
from diffusion_core import generate as G  # noqa: E402
from diffusion_core import views as V  # noqa: E402
from diffusion_core.data import decode_image  # noqa: E402
from diffusion_core.checkpoint import load_checkpoint  # noqa: E402
from diffusion_core.images import make_grid, png_bytes  # noqa: E402
from diffusion_core.samplers import SamplerConfig  # noqa: E402
from explorer_ui import pictures  # noqa: E402

VIEWS = {"xy_grid": "XY grid", "branch": "Branch", "neighbourhood": "Neighbourhood", "edit": "Edit",
         "geometry": "Geometry", "inversion": "Inversion"}


@pytest.mark.parametrize("page", VIEWS)
def test_view_launches(monkeypatch, folder, page):
    at = open_app(monkeypatch, folder, page)
    clean(at)
    assert at.title[0].value == VIEWS[page]
    if page == "edit":
        assert "Upload an image" in at.info[0].value
    else:
        assert len(at.image) >= 1 and at.get("download_button")


@pytest.mark.parametrize("page", VIEWS)
def test_view_without_checkpoints_explains_how_to_make_one(monkeypatch, tmp_path, page):
    at = open_app(monkeypatch, tmp_path, page)
    assert not at.exception
    assert any("python -m diffusion_core train" in c.value for c in at.code)


def test_xy_grid_is_the_labelled_grid_of_its_cells(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "xy_grid")
    clean(at)
    steps, seed = at.number_input(key="xy_steps").value, at.number_input(key="xy_seed").value
    models = {"tiny_a": load_checkpoint(folder / "tiny_a.json"), "tiny_b": load_checkpoint(folder / "tiny_b.json")}
    rows, cols = V.Axis("sampler", ("ddim", "dpmpp_2m")), V.Axis("steps", (5, 10, 20))
    cells = V.grid_cells(V.Cell("tiny_a", "ddim", steps, 0.0, seed), rows, cols)
    expected = pictures.labelled_grid(V.grid_images(cells, models), ["5 steps", "10 steps", "20 steps"],
                                      ["DDIM", "DPM-Solver++(2M)"])
    np.testing.assert_array_equal(pixels(media, at.image[0]), expected)

    at.selectbox(key="xy_rows").set_value("checkpoint").run()
    at.selectbox(key="xy_cols").set_value("seed").run()
    at.text_input(key="xy_cols_seed").set_value("4, 9").run()
    clean(at)
    assert at.multiselect(key="xy_rows_checkpoint").value == ["tiny_a", "tiny_b"]
    shown = pixels(media, at.image[0])
    cells = V.grid_images(V.grid_cells(V.Cell("tiny_a", "ddim", steps, 0.0, seed),
                                       V.Axis("checkpoint", ("tiny_a", "tiny_b")), V.Axis("seed", (4, 9))), models)
    np.testing.assert_array_equal(shown, pictures.labelled_grid(cells, ["seed 4", "seed 9"], ["tiny_a", "tiny_b"]))
    # each cell is the checkpoint's own image of that seed
    np.testing.assert_array_equal(cells[1, 1], G.generate(models["tiny_b"], [9], SamplerConfig("ddim", steps))[0])

    at.selectbox(key="xy_cols").set_value("checkpoint").run()
    assert not at.exception and "the same setting" in at.error[0].value
    at.selectbox(key="xy_rows").set_value("steps").run()
    at.text_input(key="xy_rows_steps").set_value("5, 2000").run()
    assert not at.exception and "beyond this model's schedule" in at.error[0].value
    at.text_input(key="xy_rows_steps").set_value("5, x").run()
    assert not at.exception and "Rows: steps must be whole numbers" in at.error[0].value


def test_branch_with_the_original_settings_is_the_original(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "branch")
    clean(at)
    steps, k = at.number_input(key="branch_steps").value, at.number_input(key="branch_k").value
    assert k == steps // 2 and len(at.image) == 3  # the original and two branches
    model = load_checkpoint(folder / "tiny_a.json")
    final = G.generate(model, [0], SamplerConfig("ddim", steps))[0]
    assert_shows(pixels(media, at.image[0]), final)  # opens on the finished samples
    assert len(at.get("plotly_chart")) == 1

    at.selectbox(key="branch_0_sampler").set_value("ddim").run()  # DDIM at eta 0, as the original
    at.number_input(key="branch_0_eta").set_value(0.0).run()
    clean(at)
    assert_shows(pixels(media, at.image[1]), final)
    assert not np.array_equal(pixels(media, at.image[2]), pixels(media, at.image[0]))  # DDIM eta 1 drifts away
    pics = V.branch(model, 0, SamplerConfig("ddim", steps), k, [V.Branch("ddim"), V.Branch("ddim", 1.0, 2)])
    at.slider(key="branch_view").set_value(k + 1).run()
    clean(at)
    for i, run in enumerate([pics.original, *pics.branches]):
        assert_shows(pixels(media, at.image[i]), run[k + 1])

    at.number_input(key="branch_steps").set_value(4).run()  # the branch step follows fewer steps
    clean(at)
    assert at.number_input(key="branch_k").value == 3


def test_neighbourhood_variations_and_a_closed_walk(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "neighbourhood")
    clean(at)
    model = load_checkpoint(folder / "tiny_a.json")
    config = SamplerConfig("ddim", at.number_input(key="nb_steps").value)
    count = at.number_input(key="nb_count").value
    at.slider(key="nb_strength").set_value(0.0).run()
    clean(at)
    own = G.generate(model, [0], config)[0]
    assert_shows(pixels(media, at.image[0]), make_grid(np.repeat(own[None], count + 1, 0), cols=min(9, count + 1)))

    at.slider(key="nb_strength").set_value(0.3).run()
    clean(at)
    images = V.variations(model, 0, list(range(1000, 1000 + count)), 0.3, config)
    assert_shows(pixels(media, at.image[0]), make_grid(np.concatenate([own[None], images]), cols=min(9, count + 1)))

    frames = at.number_input(key="nb_frames").value
    gif = Image.open(io.BytesIO(media[at.image[1].value[0].rsplit("/", 1)[-1].split(".")[0]]))
    assert gif.format == "GIF" and gif.n_frames == frames
    strip = V.walk_frames(model, 0, 1, frames, config)
    np.testing.assert_array_equal(strip[0], own)
    assert_shows(pixels(media, at.image[2]), make_grid(strip, cols=min(frames, 12)))

    at.number_input(key="nb_towards").set_value(0).run()
    assert not at.exception and "different from the first" in at.error[0].value
    at.selectbox(key="nb_sampler").set_value("dpmpp_2m").run()
    assert at.selectbox(key="nb_sampler").options == ["DDIM", "DPM-Solver++(2M)"]


def test_edit_gives_the_image_back_at_strength_zero_and_keeps_the_unmasked_part(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "edit")
    picture = random_images(1, 32, seed=2)[0]
    at.file_uploader(key="edit_upload").set_value([("room.png", png_bytes(picture), "image/png")]).run()
    clean(at)
    model = load_checkpoint(folder / "tiny_a.json")
    image = decode_image(png_bytes(picture), 16)
    steps = at.number_input(key="edit_steps").value
    edited = E.edit_image(model, image, SamplerConfig("ddim", steps), 0.5, 0)
    assert_shows(pixels(media, at.image[0]), image)
    assert_shows(pixels(media, at.image[1]), edited)

    at.slider(key="edit_strength").set_value(0.0).run()
    clean(at)
    assert_shows(pixels(media, at.image[1]), image)

    at.checkbox(key="edit_sweep").check().run()  # every strength, the first (0) the image itself
    clean(at)
    strip = pixels(media, at.image[2])
    sweep = [E.edit_image(model, image, SamplerConfig("ddim", steps), s, 0) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    np.testing.assert_array_equal(strip, pictures.labelled_grid(np.stack(sweep)[None], [
        f"strength {s:g}" for s in (0, 0.25, 0.5, 0.75, 1)]))
    np.testing.assert_array_equal(sweep[0], image)
    at.checkbox(key="edit_sweep").uncheck()

    at.slider(key="edit_strength").set_value(1.0)
    at.checkbox(key="edit_masked").check().run()
    clean(at)
    mask = E.rectangle_mask(16, 0.25, 0.25, 0.75, 0.75)
    shown = pixels(media, at.image[1])[::16, ::16]  # one pixel per model pixel (upscaled by 16)
    np.testing.assert_array_equal(shown[~mask], image[~mask])
    assert not np.array_equal(shown[mask], image[mask])

    at.file_uploader(key="edit_upload").set_value([("notes.png", b"hello", "image/png")]).run()
    assert not at.exception and "notes.png: not a readable image" in at.error[0].value


def series(trace: dict, axis: str) -> np.ndarray:
    """A plotly trace's x or y values, plain or as plotly's typed-array encoding."""
    v = trace[axis]
    return np.frombuffer(base64.b64decode(v["bdata"]), v["dtype"]) if isinstance(v, dict) else np.asarray(v)


def test_geometry_paths_are_the_core_projection(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "geometry")
    clean(at)
    seeds = [int(s) for s in at.text_input(key="geo_seeds").value.split("-")]
    seeds = list(range(seeds[0], seeds[-1] + 1))
    assert len(seeds) >= 2
    model = load_checkpoint(folder / "tiny_a.json")
    config = SamplerConfig("ddim", at.number_input(key="geo_steps").value)
    geo = A.trajectory_geometry(model, seeds, config)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    x_t = json.loads(charts[0].proto.spec)["data"]
    assert len(x_t) == len(seeds)
    assert len(series(x_t[0], "x")) == config.num_steps + 1  # one point per step, then the sample
    np.testing.assert_allclose(series(x_t[1], "x"), geo.x_t[1, :, 0], rtol=1e-6)
    np.testing.assert_allclose(series(json.loads(charts[1].proto.spec)["data"][0], "y"), geo.pred_x0[0, :, 1],
                               rtol=1e-6)
    cols = min(8, len(seeds))
    assert_shows(pixels(media, at.image[0]), make_grid(geo.frames[:, -1], cols=cols))
    at.slider(key="geo_step").set_value(2).run()
    clean(at)
    assert_shows(pixels(media, at.image[0]), make_grid(geo.frames[:, 2], cols=cols))
    at.text_input(key="geo_seeds").set_value("0-40").run()
    assert not at.exception and "at most 16 seeds" in at.error[0].value


def test_inversion_table_of_samples_and_uploads(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "inversion")
    clean(at)
    model = load_checkpoint(folder / "tiny_a.json")
    samples = G.generate(model, [0, 1], SamplerConfig("ddim", 50))
    rows, _ = A.inversion_quality(model, samples, [5, 10, 20], [0, 3])
    table = at.dataframe[0].value
    assert list(zip(table["steps"], table["fixed-point iterations"])) == [(5, 0), (5, 3), (10, 0), (10, 3), (20, 0),
                                                                        (20, 3)]
    np.testing.assert_allclose(table["MSE"], [r.mse for r in rows])
    assert len(at.get("plotly_chart")) == 1 and len(at.get("download_button")) == 2

    at.radio(key="inv_source").set_value("uploaded images").run()
    assert not at.exception and "upload one or more images" in at.error[0].value
    pics = random_images(2, 32, seed=6)
    at.file_uploader(key="inv_upload").set_value([(f"{i}.png", png_bytes(p), "image/png")
                                                  for i, p in enumerate(pics)])
    at.multiselect(key="inv_steps").set_value([10])
    at.number_input(key="inv_refine").set_value(0).run()
    clean(at)
    images = np.stack([decode_image(png_bytes(p), 16) for p in pics])
    rows, _ = A.inversion_quality(model, images, [10], [0])
    table = at.dataframe[0].value
    assert list(table["steps"]) == [10] and table["MSE"][0] == pytest.approx(rows[0].mse)


def test_timeline_scrubs_a_runs_sample_grids(monkeypatch, tmp_path, media):
    from explorer_ui import timeline

    runs = tmp_path / "runs"
    make_tiny_checkpoint(runs / "run1", "model")
    (runs / "run1" / "samples").mkdir()
    grids = {e: random_images(1, 40, seed=e)[0] for e in (1, 2, 10)}
    for e, grid in grids.items():
        Image.fromarray(grid).save(runs / "run1" / "samples" / f"epoch_{e:04d}.png")
    (runs / "run1" / "samples" / "epoch_0005.png").write_bytes(b"not a png")
    Image.fromarray(random_images(1, 8)[0]).save(runs / "run1" / "samples" / "other.png")  # not an epoch grid
    (runs / "run1" / "log.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": s / 4, "loss": 1 / s}) + "\n" for s in range(1, 9)))
    assert [e for e, _ in timeline.sample_grids(runs / "run1")] == [1, 2, 5, 10]

    at = open_app(monkeypatch, runs, "timeline")
    clean(at)
    assert at.select_slider(key="timeline_epoch").value == 10  # opens on the latest grid
    assert_shows(pixels(media, at.image[0]), grids[10])
    at.select_slider(key="timeline_epoch").set_value(5).run()
    assert not at.exception and "epoch_0005.png: not a readable image" in at.error[0].value
    at.select_slider(key="timeline_epoch").set_value(2).run()
    clean(at)
    assert_shows(pixels(media, at.image[0]), grids[2])
    assert len(at.get("plotly_chart")) == 1  # the run's loss
    gif = Image.open(io.BytesIO(timeline.timeline_gif(timeline.sample_grids(runs / "run1"))))
    assert gif.n_frames == 3  # the unreadable grid left out
    assert gif.size == (40, 40)  # one grid a frame (GIF's palette makes the colours approximate)

    at = open_app(monkeypatch, tmp_path / "nothing", "timeline")
    assert not at.exception and "No training run with sample grids" in at.info[0].value


def test_timeline_shows_loss_by_noise_level_and_fid_over_evaluated_snapshots(monkeypatch, tmp_path):
    from explorer_ui import timeline

    run = tmp_path / "runs" / "run1"
    ev = {"sampler": "ddim", "steps": 10, "eta": 0.0, "num_samples": 100}
    for name, epochs, fids in [("model", 20, [30.0, 25.0]), ("snapshot_e5", 5, [80.0])]:
        path = make_tiny_checkpoint(run, name, metrics={"evaluations": [
            dict(ev, fid=fids[0]), *[dict(ev, fid=f, steps=50) for f in fids[1:]]]})
        desc = json.loads(path.read_text())
        desc["training"]["epochs_completed"] = epochs
        path.write_text(json.dumps(desc))
    (run / "samples").mkdir()
    Image.fromarray(random_images(1, 16)[0]).save(run / "samples" / "epoch_0005.png")
    records = [{"step": 2, "epoch": 0.5, "loss": 0.3, "loss_by_noise": [0.1, None, 0.5]},
               {"step": 4, "epoch": 1.0, "loss": 0.2, "loss_by_noise": [0.05, 0.2, 0.4]}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')  # cut mid-line

    columns = timeline.noise_loss(run / "log.jsonl")
    assert columns["x"] == [0.5, 1.0] and columns["x_title"] == "epoch"
    assert columns["edges"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert columns["means"][0] == [0.1, 0.05] and np.isnan(columns["means"][1][0]) and columns["means"][2] == [0.5, 0.4]
    series = timeline.fid_over_snapshots(json.loads(p.read_text()) for p in sorted(run.glob("*.json")))
    assert series == {"ddim 10 steps, eta 0.0, N = 100": [(5.0, 80.0, 100), (20.0, 30.0, 100)],
                      "ddim 50 steps, eta 0.0, N = 100": [(20.0, 25.0, 100)]}

    at = open_app(monkeypatch, tmp_path / "runs", "timeline")
    clean(at)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert titles == ["Training loss", "Training loss by noise level (noise variance σ² = 1 - ᾱ)", "FID over training (lower is better)"]
    assert [d["y"] for d in charts[2]["data"]] == [[80.0, 30.0], [25.0]]
