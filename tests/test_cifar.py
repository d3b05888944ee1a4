"""CIFAR-10 as the second domain: the steps-table preset, the 50,000-image protocol's pieces at full
size (equal-N FID, KID subsets, chunked nearest neighbours), snapshots for FID against time, the
table beside the DDIM paper's column, and a 32 px checkpoint trained on a data set named like
CIFAR-10 on every page of the app."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_core import evaluation, fid, training
from diffusion_core import generate as G
from diffusion_core.checkpoint import load_checkpoint, read_description
from diffusion_core.data import load_image_set
from diffusion_core.samplers import SamplerConfig
from diffusion_core.schedules import ScheduleConfig
from diffusion_core.training import RunOptions, Trainer
from tests.helpers import make_tiny_checkpoint, random_images, tiny_experiment
from tests.test_app import one_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
sys.path.insert(0, str(ROOT / "scripts"))
import collect  # noqa: E402
import curve  # noqa: E402
import results_table  # noqa: E402
import snapshot  # noqa: E402


def cifar_archive(path: Path, images: np.ndarray, classes=("airplane", "cat")) -> Path:
    """A .tar.gz laid out as the CIFAR-10 JPEG set: train/<class>/NNNN.jpg."""
    with tarfile.open(path, "w:gz") as tar:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=95)
            info = tarfile.TarInfo(f"train/{classes[i % len(classes)]}/{i // len(classes):04d}.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


# ------------------------------------------------------------------------------- the steps table
def test_cifar_preset_is_the_ddim_papers_table_plus_dpm_solver():
    continuous = collect.table_configs("cifar", ScheduleConfig(kind="continuous_cosine"))
    assert continuous[0] == ("ddim", 50, 0.0)  # the headline first
    assert sorted(continuous) == sorted([("ddim", s, e) for e in (0.0, 1.0) for s in (10, 20, 50, 100)]
                                        + [("dpmpp_2m", 10, 0.0), ("dpmpp_2m", 20, 0.0)])
    discrete = collect.table_configs("cifar", ScheduleConfig(kind="linear", num_timesteps=1000))
    assert discrete == continuous + [("ddpm", 1000, 0.0)]
    # the README's table (results_table, which imports no torch) has a row for each measured setting
    assert sorted(row[1:] for row in results_table.CIFAR_ROWS) == sorted(discrete)
    assert ("ddpm", 1000, 0.0) not in collect.table_configs("cifar", ScheduleConfig(kind="linear", num_timesteps=500))
    # the bedrooms preset keeps its DDPM 1000 on every schedule, as before
    assert collect.table_configs("bedrooms", ScheduleConfig(kind="continuous_cosine")) == collect.TABLE
    with pytest.raises(ValueError, match="^--table-configs: unknown preset 'imagenet'; choose one of bedrooms, cifar$"):
        collect.table_configs("imagenet", ScheduleConfig())


# --------------------------------------------------------------------- the protocol at 50,000 images
def test_equal_n_at_50k_uses_disjoint_halves_and_kid_subsets_of_1000(monkeypatch):
    """50,000 real rows and 50,000 samples: floors of 25,000 vs 25,000, samples subsampled to 25,000,
    KID over subsets of 1,000 (never a 50k x 50k kernel)."""
    rng = np.random.default_rng(0)
    real = rng.standard_normal((50_000, 8))
    samples = rng.standard_normal((50_000, 8)) + 0.5  # shifted: FID about 8 x 0.25 = 2
    sizes = []
    kid = fid.kernel_inception_distance

    def spy(f1, f2, num_subsets=100, subset_size=1000, seed=0):
        sizes.append((len(f1), len(f2), subset_size))
        return kid(f1, f2, 2, subset_size, seed)  # two subsets are enough to test the wiring

    monkeypatch.setattr(fid, "kernel_inception_distance", spy)
    r = evaluation.equal_n_comparison(samples, real, splits=2, frechet="eigh")
    assert (r["num_samples"], r["num_reference"], r["splits"]) == (25_000, 25_000, 2)
    assert sizes == [(25_000, 25_000, 1000)] * 4
    assert r["floor_fid"] < 0.01 and abs(r["fid"] - 2.0) < 0.05  # ||mu||^2 = 8 x 0.5^2
    a, b = evaluation.real_halves(50_000, 1)
    assert len(np.intersect1d(a, b)) == 0 and len(np.union1d(a, b)) == 50_000


def test_nearest_neighbours_chunk_bounded_by_memory(monkeypatch):
    """At 50,000 reference rows a chunk holds at most 2^24 distances; the result equals the
    brute force answer."""
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50_000, 4))
    query = ref[[3, 49_999, 123]] + 1e-3
    shapes = []
    argpartition = np.argpartition

    def spy(a, kth, axis=-1):
        shapes.append(a.shape)
        return argpartition(a, kth, axis=axis)

    monkeypatch.setattr(np, "argpartition", spy)
    dist, idx = fid.nearest_neighbours(np.repeat(query, 200, axis=0), ref, k=1)  # 600 queries
    assert [s[0] for s in shapes] == [335, 265] and all(s[1] == 50_000 for s in shapes)
    assert list(idx[::200, 0]) == [3, 49_999, 123]
    np.testing.assert_allclose(dist[::200, 0], np.linalg.norm(query - ref[[3, 49_999, 123]], axis=1))


# ------------------------------------------------------------------------ snapshots and the curve
def test_keep_snapshots_keeps_every_save_and_the_curve_reads_them(tmp_path, monkeypatch):
    exp = tiny_experiment("snap", image_size=16, epochs=3, checkpoint_every=1, batch_size=8)
    trainer = Trainer(exp, random_images(16, 16), tmp_path / "run",
                      RunOptions(progress=False, keep_snapshots=True), {"name": "cifar10-train", "size": 16})
    ticks = iter(range(10**6))  # a clock that advances a second at every reading: training time is never 0 s
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(ticks)))
    trainer.run()
    monkeypatch.undo()
    found = curve.snapshots(tmp_path / "run")
    assert [p.name for p in found] == ["step_00000002.json", "step_00000004.json", "step_00000006.json"]
    first, last = read_description(found[0]), read_description(found[-1])
    assert first["training"]["steps"] == 2 and last["training"]["images_seen"] == 48
    # each snapshot records the training time up to its save (the curve's x axis), not 0 until the end
    times = [read_description(p)["training"]["wall_time_s"] for p in found]
    final = read_description(tmp_path / "run" / "model.json")["training"]["wall_time_s"]
    assert 0 < times[0] < times[1] < times[2] == final
    final = load_checkpoint(tmp_path / "run" / "model.json")
    kept = load_checkpoint(found[-1])
    for name, value in final.network.state_dict().items():  # the last snapshot is the final model
        assert torch.equal(value, kept.network.state_dict()[name]), name
    point = curve.curve_point(last, {"fid": 12.3, "kid": 0.01, "num_samples": 256, "num_reference": 512,
                                     "sampler": "ddim", "steps": 50, "eta": 0.0, "weights": "w",
                                     "sampling_time_s": 1.0})
    assert (point["step"], point["epochs"], point["images_seen"]) == (6, 3.0, 48)
    assert point["gpu_minutes"] == round(last["training"]["wall_time_s"] / 60, 2)
    assert curve.spread(found, 2) == [found[0], found[2]] and curve.spread(found, 1) == [found[2]]
    assert curve.spread(found, None) == found == curve.spread(found, 9)
    with pytest.raises(ValueError, match="no snapshots; train with --keep-snapshots$"):
        curve.snapshots(tmp_path)

    # scripts/gpu/snapshot.py: the snapshot at an epoch, as the row of an experiment equal up to length
    short = tmp_path / "snap_short.toml"
    short.write_text('[experiment]\nname = "snap_short"\n[schedule]\nkind = "continuous_cosine"\n'
                     'num_timesteps = 1000\n[network]\nwidths = [8, 16]\nblock_depth = 1\nimage_size = 16\n'
                     '[data]\naugment = "none"\n[train]\nepochs = 2\nbatch_size = 8\nsample_every = 0\n')
    monkeypatch.setattr(sys, "argv", ["snapshot.py", str(tmp_path / "run"), "--epoch", "2", "--as", str(short),
                                      "--out", str(tmp_path / "short")])
    snapshot.main()
    copy = load_checkpoint(tmp_path / "short" / "model.json")
    middle = load_checkpoint(found[1])
    assert copy.name == "model" and copy.description["name"] == "snap_short" == copy.experiment.name
    for name, value in middle.network.state_dict().items():
        assert torch.equal(value, copy.network.state_dict()[name]), name
    assert copy.description["training"]["steps"] == 4 and copy.description["training"]["finished"] is True
    logged = [json.loads(line)["step"] for line in (tmp_path / "short" / "log.jsonl").read_text().splitlines()]
    assert logged and max(logged) == 4
    short.write_text(short.read_text().replace("block_depth = 1", "block_depth = 2"))
    with pytest.raises(SystemExit, match=r"differs from .* in more than its length: \[\('network', 'block_depth'\)\]"):
        snapshot.main()
    monkeypatch.setattr(sys, "argv", sys.argv[:3] + ["5"] + sys.argv[4:])
    with pytest.raises(SystemExit, match="kept no snapshot at epoch 5 \\(it kept 1, 2, 3\\)"):
        snapshot.main()


def test_snapshot_compares_experiments_as_the_core_reads_them():
    """A description written before a field existed differs from its TOML only where the settings
    really differ (DDIM 9's run predates several schedule fields and the EMA warm-up), and DDIM 10
    and 11 differ only in their length."""
    from diffusion_core.checkpoint import experiment_from_description
    from diffusion_core.config import load_experiment

    old = experiment_from_description(json.loads((ROOT / "results" / "descriptions" / "ddim_09.json").read_text()),
                                      "ddim_09")
    nine = load_experiment(ROOT / "experiments" / "ddim_09.toml")
    assert snapshot.differences(old, nine) == {("train", "ema_warmup")}
    ten, eleven = (load_experiment(ROOT / "experiments" / f"ddim_{n}.toml") for n in (10, 11))
    assert snapshot.differences(ten, eleven) and snapshot.differences(ten, eleven) <= snapshot.LENGTH_FIELDS


# ----------------------------------------------------------------------------------- the table
def test_cifar_table_sits_beside_the_ddim_papers_column():
    def ev(sampler, steps, eta, value):
        return {"sampler": sampler, "steps": steps, "eta": eta, "fid": value, "kid": 0.001, "num_samples": 50_000,
                "weights": "fid-inception"}

    head = ev("ddim", 50, 0.0, 5.123) | {"near_copy_share": 0.0004, "equal_n": {
        "fid": 5.5, "floor_fid": 2.1, "ratio": 2.619, "num_samples": 25_000, "splits": 3}}
    desc = {"parameters": 9_000_000, "training": {"wall_time_s": 1200.0, "device": "NVIDIA H200",
                                                  "images_seen": 12_000_000},
            "metrics": {"evaluations": [head, ev("ddim", 10, 0.0, 14.0), ev("dpmpp_2m", 10, 0.0, 9.5)],
                        "fid_curve": [{"gpu_minutes": 5.0, "fid": 9.0, "sampler": "ddim", "steps": 50,
                                       "num_samples": 10_000}]}}
    text = results_table.cifar_table(desc)
    lines = text.splitlines()
    assert "| DDIM, eta 0 | 10 | 14.00 | 50,000 | 0.0010 | 13.36 |" in lines
    assert "| DDIM, eta 0 | 50 | 5.12 | 50,000 | 0.0010 | 4.67 |" in lines
    assert "| DDIM, eta 0 | 20 | - | - | - | 6.84 |" in lines  # not measured
    assert "| DPM-Solver++(2M) | 10 | 9.50 | 50,000 | 0.0010 | - |" in lines
    assert "| DDPM ancestral | 1000 | - | - | - | 3.17 |" in lines
    assert "Training: 20.0 GPU-minutes on NVIDIA H200, 12,000,000 images seen, 9.00M parameters." in lines
    assert any(line.startswith("Equal N (DDIM 50): FID 5.50 of 25,000 samples") and "floor 2.10" in line
               for line in lines)
    assert "Near copies (DDIM 50): 0.04% of samples." in lines
    assert "FID against training time (ddim 50 steps, N = 10,000): 5.0 min 9.00." in lines
    assert lines[-1] == results_table.JPEG_NOTE and "re-encoded as JPEG" in lines[-1]


# ------------------------------------------------------------------------------------------ the app
def cifar_checkpoint(folder: Path, source: Path) -> Path:
    """A tiny 32 px checkpoint whose description names the CIFAR-10 data set (as training records it)."""
    path = make_tiny_checkpoint(folder, "cifar_tiny", image_size=32)
    desc = json.loads(path.read_text())
    desc["training"]["dataset"] = {"name": "cifar10-train", "source": str(source), "available": 40, "size": 40}
    path.write_text(json.dumps(desc))
    return path


def test_cifar_data_is_found_by_its_name_and_loads_at_32px(tmp_path):
    from explorer_ui import neighbours

    shared = tmp_path / "shared"
    shared.mkdir()
    archive = cifar_archive(shared / "cifar10-train.tar.gz", random_images(40, 32, seed=3))
    path = cifar_checkpoint(tmp_path / "ck", Path("/trainer/data/cifar10-train.tar.gz"))
    model = load_checkpoint(path)
    assert neighbours.local_source(model.description, [tmp_path / "data", shared]) == str(archive)
    by_name = {"training": {"dataset": {"name": "cifar10-train"}}}  # no path recorded
    assert neighbours.local_source(by_name, [shared]) == str(archive)
    data = neighbours.training_data(model.experiment, model.description, str(archive))
    images = neighbours.load_images(data, tmp_path / "cache")
    assert images.name == "cifar10-train" and images.images.shape == (40, 32, 32, 3)


def test_app_pages_work_on_a_32px_cifar_checkpoint(monkeypatch, tmp_path, one_thread):
    pytest.importorskip("streamlit")
    from tests.test_app import PAGES, clean, open_app
    from tests.test_views import VIEWS
    from explorer_ui import catalog

    monkeypatch.setattr(catalog, "RESULTS_FOLDER", tmp_path / "no-results")
    ck = tmp_path / "checkpoints"
    cifar_checkpoint(ck, tmp_path / "cifar10-train.tar.gz")
    make_tiny_checkpoint(ck, "tiny_bedrooms", image_size=16)  # the other domain, listed after it
    at = open_app(monkeypatch, ck, "experiments")
    clean(at)
    assert list(at.dataframe[0].value["name"]) == ["cifar_tiny", "tiny_bedrooms"]
    for page in [p for p in PAGES if p != "experiments"] + list(VIEWS) + ["timeline"]:
        at.switch_page(f"app_pages/{page}.py").run()
        clean(at)
        boxes = [b for b in at.selectbox if "cifar_tiny" in b.options]  # the checkpoint choices
        assert all(b.value == "cifar_tiny" for b in boxes), (page, [b.value for b in boxes])


def test_sample_page_finds_nearest_cifar_images(monkeypatch, tmp_path):
    """The nearest-images panel on a 32 px checkpoint: the data set is found by its name in a data
    folder (the recorded path is another machine's), decoded at 32 px, and the neighbours shown
    are the ones the core finds (fake colour-moment features instead of FID Inception)."""
    pytest.importorskip("streamlit")
    from tests.test_app import clean, open_app
    from tests.test_app_neighbours import FakeExtractor
    from explorer_ui import catalog, compute, neighbours

    monkeypatch.setattr(catalog, "RESULTS_FOLDER", tmp_path / "no-results")
    monkeypatch.setattr(compute, "_threads", 1)
    monkeypatch.setattr(fid, "default_weights_path", lambda: tmp_path / "fake-weights.pt")
    monkeypatch.setattr(fid, "load_feature_extractor", lambda weights, device="cpu", **kw: FakeExtractor())
    monkeypatch.setattr(neighbours, "CACHE_ROOT", tmp_path / "cache")
    (tmp_path / "data").mkdir()
    archive = cifar_archive(tmp_path / "data" / "cifar10-train.tar.gz", random_images(40, 32, seed=5))
    monkeypatch.setenv(neighbours.DATA_ENV, str(tmp_path / "data"))
    path = cifar_checkpoint(tmp_path / "ck", Path("/trainer/data/cifar10-train.tar.gz"))
    at = open_app(monkeypatch, path.parent, "sample")
    clean(at)
    at.selectbox(key="nn_index").set_value(1)
    at.button(key="nn_go").click().run()
    clean(at)
    assert len(at.image) == 2 + neighbours.K  # the grid, the sample and its neighbours
    train = load_image_set(archive, 32).images
    sample = G.generate(load_checkpoint(path), [1], SamplerConfig("ddim", 20))[0]  # the page's default
    found = neighbours.nearest(sample, train, FakeExtractor()(train), FakeExtractor())
    assert [c for image in at.image[2:] for c in image.captions] == [
        f"training image {i}: distance {d:.2f}" for i, d in zip(found["indices"], found["distances"])]
    assert "No near-copy threshold" not in " ".join(c.value for c in at.caption)  # 40 images: it has one
