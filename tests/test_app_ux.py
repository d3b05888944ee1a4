"""The app as a new user meets it: a home page first, settings that follow the user from page to
page and into a shareable link, Compare opening on the best models at a fair step count, each
checkpoint on the sampler it was trained for, eta applied by a button, one time convention, and
Experiments' table and chart readable from their first columns. ``AppTest`` on tiny checkpoints
(``helpers.make_tiny_checkpoint``), pixels compared with the core's output as in ``test_app.py``."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint, random_images  # noqa: E402
from test_app import (ROOT, assert_shows, clean, folder, media, no_results,  # noqa: E402,F401
                      one_thread, open_app, pixels)

from diffusion_core import generate as G  # noqa: E402
from diffusion_core.checkpoint import load_checkpoint  # noqa: E402
from diffusion_core.images import make_grid  # noqa: E402
from diffusion_core.samplers import SamplerConfig  # noqa: E402
from explorer_ui import catalog, pictures  # noqa: E402

SHIPPED = ROOT / "checkpoints"
EQUAL_N = {"splits": 3, "num_samples": 1455, "num_reference": 1456, "fid": 30.0, "floor_fid": 12.0, "ratio": 2.5}


def media_bytes(media: dict[str, bytes], url: str) -> bytes:
    return media[url.rsplit("/", 1)[-1].split(".")[0]]


def widget_values(at: AppTest, prefix: str) -> dict:
    values = {"checkpoint": at.selectbox(key=f"{prefix}_checkpoint").value,
              "sampler": at.selectbox(key=f"{prefix}_sampler").value,
              "steps": at.number_input(key=f"{prefix}_steps").value}
    if prefix != "interp":  # interpolation takes a list of seeds, not a first seed
        values["seed"] = at.number_input(key=f"{prefix}_seed").value
    return values


# -------------------------------------------------------------------------- shared settings, URL
def test_shared_settings_follow_across_pages_and_into_the_url(monkeypatch, folder, media):
    at = open_app(monkeypatch, folder, "sample")
    at.selectbox(key="sample_checkpoint").set_value("tiny_b").run()
    at.selectbox(key="sample_sampler").set_value("ddpm")
    at.number_input(key="sample_steps").set_value(7)
    at.number_input(key="sample_seed").set_value(5).run()
    clean(at)
    chosen = {"checkpoint": "tiny_b", "sampler": "ddpm", "steps": 7, "seed": 5}
    assert at.query_params == {k: str(v) for k, v in chosen.items()}

    at.switch_page("app_pages/trajectory.py").run()
    clean(at)
    assert widget_values(at, "traj") == chosen
    traj = G.trajectory(load_checkpoint(folder / "tiny_b.json"), 5, SamplerConfig("ddpm", 7))
    assert_shows(pixels(media, at.image[0]), traj.x_t[-1])

    at.switch_page("app_pages/live.py").run()
    clean(at)
    assert widget_values(at, "live") == chosen
    at.switch_page("app_pages/interpolation.py").run()  # deterministic samplers only: DDPM is not offered
    clean(at)
    assert widget_values(at, "interp") == {"checkpoint": "tiny_b", "sampler": "ddim", "steps": 7}
    assert at.query_params == {k: str(v) for k, v in dict(chosen, sampler="ddim").items()}

    # a new checkpoint takes its own defaults for sampler and steps; the seed stays
    at.selectbox(key="interp_checkpoint").set_value("tiny_a").run()
    clean(at)
    assert widget_values(at, "interp") == {"checkpoint": "tiny_a", "sampler": "ddim", "steps": 20}
    assert at.query_params["seed"] == "5"


def test_a_shared_link_opens_on_its_settings(monkeypatch, folder, media):
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params.update(checkpoint="tiny_b", sampler="ddpm", steps="7", seed="5")
    at.run()
    at.switch_page("app_pages/sample.py").run()
    clean(at)
    assert not at.warning
    assert widget_values(at, "sample") == {"checkpoint": "tiny_b", "sampler": "ddpm", "steps": 7, "seed": 5}
    expected = G.generate(load_checkpoint(folder / "tiny_b.json"), [5, 6, 7, 8], SamplerConfig("ddpm", 7))
    assert_shows(pixels(media, at.image[0]), make_grid(expected, cols=4))


@pytest.mark.parametrize("query, note", [
    ({"checkpoint": "../../etc/passwd"}, "checkpoint=`../../etc/passwd` is not a checkpoint listed here"),
    ({"checkpoint": "![x](http://e.vil/x.png)`**"}, "checkpoint=`![x](http://e.vil/x.png)**` is not a checkpoint "
                                                    "listed here"),  # shown literally, never as markdown
    ({"sampler": "exec"}, "sampler=`exec` is not one of ddpm, ddim, dpmpp_2m"),
    ({"steps": "1e9"}, "steps=`1e9` is not a whole number"),
    ({"steps": "0"}, "steps=0 is outside 1 to 100000"),
    ({"seed": "-1"}, "seed=`-1` is not a whole number"),
    ({"seed": "٣"}, "seed=`٣` is not a whole number"),  # a digit to str.isdigit, not to the seed grammar
    ({"seed": str(2**40)}, f"seed={2**40} is outside 0 to {2**31 - 1}"),
])
def test_invalid_link_values_are_ignored_with_a_note(monkeypatch, folder, query, note):
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params.update(query, seed=query.get("seed", "3"))
    at.run()
    at.switch_page("app_pages/sample.py").run()
    assert not at.exception and not at.error
    assert [w.value for w in at.warning] == [f"The link's settings were not all usable: {note}; ignored."]
    values = widget_values(at, "sample")
    defaults = {"checkpoint": "tiny_a", "sampler": "ddim", "steps": 20, "seed": 0 if "seed" in query else 3}
    assert values == defaults  # the valid values of the link are used, the invalid one ignored
    at.number_input(key="sample_seed").set_value(11).run()  # the user moved on: the note goes
    assert not at.warning and at.query_params["seed"] == "11"


@pytest.mark.parametrize("page, query, note", [
    ("sample", {"steps": "5000"}, "steps=5000 does not fit here (DDIM takes 1 to 1000 steps on this model)"),
    ("interpolation", {"sampler": "ddpm"}, "sampler=ddpm does not fit here (this page offers ddim, dpmpp_2m)"),
])
def test_link_values_beyond_the_page_are_ignored_with_a_note(monkeypatch, folder, page, query, note):
    monkeypatch.setenv("DIFFUSION_EXPLORER_CHECKPOINTS", str(folder))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params.update(query)
    at.run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception and not at.error
    assert [w.value for w in at.warning] == [f"The link's settings were not all usable: {note}; ignored."]
    prefix = page[:6] if page == "interpolation" else page
    assert widget_values(at, prefix) == {"checkpoint": "tiny_a", "sampler": "ddim", "steps": 20} | (
        {"seed": 0} if page == "sample" else {})
    assert {k: at.query_params[k] for k in query} == {k: {"steps": "20", "sampler": "ddim"}[k] for k in query}


# ----------------------------------------------------------------------------------------- Compare
def test_compare_opens_on_the_best_two_at_a_fair_step_count(monkeypatch, folder, media):
    make_tiny_checkpoint(folder, "tiny_c", image_size=32, seed=2, metrics={"fid": 50.0})
    at = open_app(monkeypatch, folder, "compare")
    clean(at)
    assert at.multiselect(key="cmp_checkpoints").value == ["tiny_c", "tiny_a"]  # FID 50, then 123.4
    assert at.number_input(key="cmp_steps").value == 20
    c, a = pixels(media, at.image[0]), pixels(media, at.image[1])
    assert c.shape == a.shape  # 32 px and 16 px grids drawn at one size
    config, cols = SamplerConfig("ddim", 20), at.number_input(key="cmp_cols").value
    images_c = G.generate(load_checkpoint(folder / "tiny_c.json"), [0, 1, 2, 3], config)
    images_a = G.generate(load_checkpoint(folder / "tiny_a.json"), [0, 1, 2, 3], config)
    grid_c, grid_a = make_grid(images_c, cols=cols), make_grid(pictures.resize_images(images_a, 32), cols=cols)
    assert_shows(c, grid_c)
    assert_shows(a, grid_a)  # each 16 px image doubled, whole pixels
    notes = " ".join(i.value for i in at.info) + " ".join(x.value for x in at.caption)
    assert "Equal seeds give equal starting noise only at equal image sizes" in notes
    assert "tiny_c: 32 px, tiny_a: 16 px" in notes

    (download,) = [d for d in at.get("download_button") if d.proto.label == "Download side by side (PNG)"]
    png = np.asarray(Image.open(io.BytesIO(media_bytes(media, download.proto.url))).convert("RGB"))
    np.testing.assert_array_equal(png, pictures.labelled_grid(np.stack([grid_c, grid_a])[None],
                                                              ["tiny_c (32 px)", "tiny_a (16 px)"]))


def test_compare_defaults_to_the_shipped_checkpoints_lowest_fids():
    """Read from the shipped descriptions, not named: the two lowest recorded FIDs come first, a
    checkpoint with no FID of its own (an autoguidance guide measured only as a guide) last."""
    entries = [e for e in catalog.scan(SHIPPED) if e.usable]
    fids = {p.stem: json.loads(p.read_text())["metrics"].get("fid", math.inf) for p in SHIPPED.glob("*.json")}
    order = [entries[i].label for i in catalog.by_fid(entries)]
    assert order == sorted(fids, key=lambda name: (fids[name], name)) and len(order) == len(fids) >= 2
    assert sum(math.isfinite(f) for f in fids.values()) >= 2


# ------------------------------------------------------------------------- samplers, clip, eta
def test_checkpoint_opens_on_its_trained_sampler_and_offers_clipping(monkeypatch, tmp_path, media):
    ck = tmp_path / "ck"
    make_tiny_checkpoint(ck, "tiny_ddpm", schedule="linear", metrics={"fid": 10.0})  # family ddpm
    make_tiny_checkpoint(ck, "tiny_ddim", seed=1)
    ddpm = load_checkpoint(ck / "tiny_ddpm.json")
    assert ddpm.experiment.family == "ddpm" and ddpm.experiment.schedule.kind == "linear"
    at = open_app(monkeypatch, ck, "sample")
    clean(at)
    assert at.selectbox(key="sample_checkpoint").value == "tiny_ddpm"
    assert at.selectbox(key="sample_sampler").value == "ddpm"
    assert "trained for DDPM (ancestral)" in at.selectbox(key="sample_sampler").help
    assert_shows(pixels(media, at.image[0]),
                 make_grid(G.generate(ddpm, [0, 1, 2, 3], SamplerConfig("ddpm", 20)), cols=4))

    at.checkbox(key="sample_clip").check().run()
    clean(at)
    clipped = G.generate(ddpm, [0, 1, 2, 3], SamplerConfig("ddpm", 20, clip_denoised=True))
    assert_shows(pixels(media, at.image[0]), make_grid(clipped, cols=4))
    assert not np.array_equal(clipped, G.generate(ddpm, [0, 1, 2, 3], SamplerConfig("ddpm", 20)))

    at.selectbox(key="sample_checkpoint").set_value("tiny_ddim").run()  # its own sampler, clipping off
    clean(at)
    assert at.selectbox(key="sample_sampler").value == "ddim" and not at.checkbox(key="sample_clip").value


def test_eta_starts_a_job_only_when_applied(monkeypatch, folder, media):
    calls = []
    real = G.generate

    def counting(model, seeds, config, *args, **kwargs):
        calls.append(config)
        return real(model, seeds, config, *args, **kwargs)

    monkeypatch.setattr(G, "generate", counting)
    at = open_app(monkeypatch, folder, "sample")
    clean(at)
    assert calls == [SamplerConfig("ddim", 20)]
    for eta in (0.05, 0.1, 0.15):  # keyboard steps of the slider
        at.slider(key="sample_eta").set_value(eta).run()
        clean(at)
    assert len(calls) == 1  # no job per step
    at.slider(key="sample_eta").set_value(0.15)
    at.button(key="FormSubmitter:sample_eta_form-Apply eta").click().run()
    clean(at)
    assert calls[1:] == [SamplerConfig("ddim", 20, 0.15)]
    model = load_checkpoint(folder / "tiny_a.json")
    expected = real(model, [0, 1, 2, 3], SamplerConfig("ddim", 20, 0.15))
    assert_shows(pixels(media, at.image[0]), make_grid(expected, cols=4))


# ------------------------------------------------------------------------------ home, Experiments
def test_home_page_comes_first_with_the_best_models_grid(monkeypatch, tmp_path, media):
    ck = tmp_path / "checkpoints"
    make_tiny_checkpoint(ck, "tiny_a", metrics={"fid": 123.4})
    make_tiny_checkpoint(ck, "tiny_best", seed=1, metrics={"fid": 42.0, "equal_n": EQUAL_N})
    grids = tmp_path / "results" / "samples"
    grids.mkdir(parents=True)
    shipped = random_images(1, 40, seed=5)[0]
    Image.fromarray(shipped).save(grids / "tiny_best.png")
    Image.fromarray(random_images(1, 40, seed=6)[0]).save(grids / "tiny_a.png")
    at = open_app(monkeypatch, ck, "home")
    clean(at)
    assert at.title[0].value == "diffusion-explorer"
    assert "The best model here: tiny_best" in [h.value for h in at.subheader]
    np.testing.assert_array_equal(pixels(media, at.image[0]), shipped)
    assert "FID 42.0, 2.50 times the real-vs-real floor" in at.image[0].proto.imgs[0].caption
    links = [link.proto.page for link in at.get("page_link")]
    assert [Path(p).stem for p in links] == ["experiments", "sample", "trajectory", "interpolation", "compare",
                                             "live", "xy_grid", "branch", "neighbourhood", "edit", "geometry",
                                             "inversion", "timeline"]  # every page, in the sidebar's order

    at.switch_page("app_pages/experiments.py").run()
    clean(at)
    table = at.dataframe[0].value
    assert list(table.columns[:3]) == ["name", "FID", "FID / floor"]
    assert list(table["FID / floor"].fillna(-1)) == [-1, 2.5]


def test_shipped_rows_show_fid_over_floor_at_equal_n():
    """The table's FID / floor is the equal-N ratio the descriptions record (as the README's table)."""
    for entry in catalog.scan(SHIPPED):
        measured = json.loads(entry.path.read_text())["metrics"]
        row = catalog.table_row(entry)
        assert row["FID / floor"] == measured["equal_n"]["ratio"] == pytest.approx(
            measured["equal_n"]["fid"] / measured["equal_n"]["floor_fid"], rel=2e-3)


def test_fid_chart_names_are_axis_labels_with_room(monkeypatch, folder):
    long = "an_experiment_with_a_really_long_descriptive_name"
    make_tiny_checkpoint(folder, long, metrics={"fid": 77.0})
    at = open_app(monkeypatch, folder)
    clean(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    (bars,) = spec["data"]
    assert bars["orientation"] == "h" and list(bars["y"]) == [long, "tiny_a", "tiny_b"]
    assert spec["layout"]["yaxis"]["automargin"] is True and spec["layout"]["height"] >= 120 + 34 * 3


# ---------------------------------------------------------------------------------------- Trajectory
@pytest.mark.parametrize("schedule, own", [("linear", "step t = 999 of its discrete schedule's 0 to 999"),
                                           ("continuous_cosine", "t = 1 on its continuous schedule's 0 to 1")])
def test_trajectory_one_time_convention_and_one_picture_size(monkeypatch, tmp_path, media, schedule, own):
    ck = tmp_path / "ck"
    make_tiny_checkpoint(ck, "tiny", schedule=schedule)
    at = open_app(monkeypatch, ck, "trajectory")
    at.number_input(key="traj_steps").set_value(10).run()
    shapes = set()
    for i, t in [(0, "1.000"), (5, "0.500"), (10, None)]:
        at.slider(key="traj_step").set_value(i).run()
        clean(at)
        shapes |= {pixels(media, at.image[k]).shape for k in (0, 1)}
        (caption,) = [c for c in at.caption if c.value.startswith(f"Step {i} of 10")]
        if t is not None:
            assert f"t = {t} (1 is pure noise, 0 clean)" in caption.value
            assert at.image[0].proto.imgs[0].caption == f"x_t, input of step {i}"
        else:
            assert "t = 0 (clean)" in caption.value
        if i == 0:
            assert caption.proto.help == f"This model's own time: {own}."
    assert shapes == {(256, 256, 3)}


def test_every_measured_unshipped_experiment_is_a_row_with_its_ratio():
    """Each experiment of results/descriptions/ measured at equal N (the README's table) whose weights
    do not ship is a row of the Experiments table, FID / floor shown."""
    results = ROOT / "results" / "descriptions"  # the repo's (the autouse fixture hides them from the app)
    measured = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json") if p.name not in catalog.NOT_RESULTS}
    expected = {name: d["metrics"]["equal_n"]["ratio"] for name, d in measured.items()
                if "shipped" not in d and (d.get("metrics") or {}).get("equal_n")}
    assert {"ddim_02", "ddim_04", "ddim_05", "ddim_06", "ddpm_01"} <= expected.keys()
    rows = {row["name"]: row for row in catalog.unshipped_results(folder=results)}
    assert {name: rows[name]["FID / floor"] for name in expected if name in rows} == expected
