"""Tests for diffusion_core.data: sources, pixel conversion, subsets, errors and the cache."""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_core import data
from diffusion_core.data import (
    DataError, ImageSet, detect_source_kind, load_image_set, preprocess_image,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFUSION_EXPLORER_DATA", REPO.parent / "shared" / "data"))


def solid(color, size=(8, 8), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def gray_folder(root: Path, count: int) -> Path:
    """count 8x8 grayscale PNGs whose value (10 * i) identifies them, in sorted-name order."""
    for i in range(count):
        write(root / f"{i:03d}.png", encode(solid(10 * i, mode="L")))
    return root


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


# --------------------------------------------------------------------------- pixels


def test_folder_recursive_mixed_modes(tmp_path):
    root = tmp_path / "mixed"
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[:, 4:] = (10, 20, 30, 255)  # opaque
    wide = np.zeros((8, 8), np.uint16)
    wide[:, :4], wide[:, 4:] = 65535, 32768
    palette = solid(0, mode="P")
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.paste(1, (0, 0, 8, 8))
    write(root / "a" / "gray.png", encode(solid(77, mode="L")))
    write(root / "b" / "c" / "rgba.png", encode(Image.fromarray(rgba)))
    write(root / "p.PNG", encode(palette))
    write(root / "photo.JPG", encode(solid((0, 0, 255)), "JPEG", quality=95))
    write(root / "w.webp", encode(solid((0, 255, 0)), "WEBP", lossless=True))
    write(root / "x16.png", encode(Image.fromarray(wide)))
    write(root / "notes.txt", b"not an image, not counted")
    with Image.open(root / "x16.png") as reopened:
        assert reopened.mode == "I;16"

    s = load_image_set(root, 8)
    assert (s.name, s.source, s.num_available, s.skipped, len(s)) == ("mixed", str(root), 6, 0, 6)
    assert s.images.dtype == np.uint8 and s.images.shape == (6, 8, 8, 3)
    assert s.images.flags.c_contiguous
    gray, rgba_out, pal, jpeg, webp, x16 = s.images  # sorted by relative path
    assert np.all(gray == 77)
    assert np.all(rgba_out[:, :4] == 255) and np.all(rgba_out[:, 4:] == (10, 20, 30))
    assert np.all(pal == (200, 100, 50))
    assert np.abs(jpeg.astype(int) - (0, 0, 255)).max() <= 3
    assert np.all(webp == (0, 255, 0))
    assert np.all(x16[:, :4] == 255) and np.all(x16[:, 4:] == 128)


def test_cmyk_and_la_convert_to_rgb():
    assert np.all(preprocess_image(solid((0, 0, 0, 0), mode="CMYK"), 8) == 255)
    assert np.all(preprocess_image(solid((0, 0, 0, 255), mode="CMYK"), 8) == 0)
    assert np.all(preprocess_image(solid((40, 0), mode="LA"), 8) == 255)  # transparent: white
    assert np.all(preprocess_image(solid((40, 255), mode="LA"), 8) == 40)


@pytest.mark.parametrize("size", [(30, 10), (10, 30)])
def test_non_square_is_center_cropped(size):
    img = solid((255, 0, 0), size)
    w, h = size
    img.paste((0, 255, 0), (10, 0, 20, h) if w > h else (0, 10, w, 20))  # centre square green
    assert np.all(preprocess_image(img, 10) == (0, 255, 0))
    assert np.all(preprocess_image(img, 8) == (0, 255, 0))  # resized from the crop only


def test_resize_shape_dtype_and_exif_orientation():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    out = preprocess_image(img, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    tall = solid((255, 0, 0), (8, 16))
    tall.paste((0, 0, 255), (0, 8, 8, 16))  # top red, bottom blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    rotated = Image.open(io.BytesIO(encode(tall, exif=exif.tobytes())))
    out = preprocess_image(rotated, 8)  # upright: 16 wide x 8 tall, blue left, red right
    assert np.all(out[:, :4] == (0, 0, 255)) and np.all(out[:, 4:] == (255, 0, 0))


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_tar_sources_sorted_and_unsafe_members_skipped(tmp_path, suffix):
    path = make_tar(tmp_path / f"mydata{suffix}", {
        "z/2.png": encode(solid(200, mode="L")),
        "a/1.png": encode(solid(100, mode="L")),
        "../evil.png": encode(solid(0, mode="L")),
        "/abs.png": encode(solid(0, mode="L")),
        "readme.txt": b"ignored",
    })
    assert detect_source_kind(path) == "tar"
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*evil\.png"):
        s = load_image_set(path, 8)
    assert (s.name, s.num_available, s.skipped) == ("mydata", 2, 2)
    assert s.images[:, 0, 0, 0].tolist() == [100, 200]


def test_lmdb_source_jpeg_and_webp(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    db = tmp_path / "bedroom_train_lmdb"
    env = lmdb.open(str(db), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"b", encode(solid((0, 0, 255)), "JPEG", quality=95))
        txn.put(b"a", encode(solid((255, 0, 0)), "WEBP", lossless=True))
        txn.put(b"c", b"garbage")
    env.close()
    assert detect_source_kind(db) == detect_source_kind(db / "data.mdb") == "lmdb"
    for source in (db, db / "data.mdb"):
        with pytest.warns(UserWarning, match="skipped 1 unreadable"):
            s = load_image_set(source, 8)
        assert (s.name, s.num_available, s.skipped, len(s)) == ("bedroom_train_lmdb", 2, 1, 2)
        assert np.all(s.images[0] == (255, 0, 0))
        assert np.abs(s.images[1].astype(int) - (0, 0, 255)).max() <= 3


def test_unreadable_files_skipped_and_counted(tmp_path, monkeypatch):
    root = gray_folder(tmp_path / "d", 3)
    good = encode(solid(5, (16, 16), mode="L"))
    write(root / "truncated.png", good[: len(good) // 2])
    write(root / "text.jpg", b"hello, I am text")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable .*(text|truncated)"):
        s = load_image_set(root, 8)
    assert (len(s), s.num_available, s.skipped) == (3, 3, 2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # every 8x8 image is now a "bomb"
    with pytest.raises(DataError, match="no readable images"):
        load_image_set(root, 8)


# --------------------------------------------------------------------------- errors


def test_user_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "notes.txt", b"text")
    write(tmp_path / "fake.tar.gz", b"not really an archive")
    for bad in (tmp_path / "empty", tmp_path / "missing", tmp_path / "notes.txt",
                tmp_path / "fake.tar.gz"):
        with pytest.raises(DataError) as err:
            load_image_set(bad, 8)
        assert str(bad) in str(err.value)
    root = gray_folder(tmp_path / "ok", 2)
    for size in (7, 1025, 8.0, True):
        with pytest.raises(DataError, match="image_size"):
            load_image_set(root, size)
    for samples in (0, -3, 1.5):
        with pytest.raises(DataError, match="samples"):
            load_image_set(root, 8, samples=samples)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(np.zeros((1, 8, 8, 3), np.float32), "x", "x", 1, 0)


# --------------------------------------------------------------------------- subsets


def test_seeded_subset_deterministic_sorted_and_seed_dependent(tmp_path):
    root = gray_folder(tmp_path / "g", 20)
    picks = [load_image_set(root, 8, samples=5, seed=seed).images[:, 0, 0, 0] for seed in (0, 0, 1)]
    assert np.array_equal(picks[0], picks[1])
    assert not np.array_equal(picks[0], picks[2])
    assert all(np.all(np.diff(p.astype(int)) > 0) for p in picks)  # kept in source order
    s = load_image_set(root, 8, samples=5, progress=True)
    assert (len(s), s.num_available) == (5, 20)


def test_subset_skips_unreadable_entries(tmp_path):
    root = gray_folder(tmp_path / "g", 6)
    for i in range(6, 12):
        write(root / f"{i:03d}.png", b"broken")
    with pytest.warns(UserWarning, match="unreadable"):
        s = load_image_set(root, 8, samples=4, seed=3)
    assert len(s) == 4 and set(s.images[:, 0, 0, 0].tolist()) <= {0, 10, 20, 30, 40, 50}


def test_samples_more_than_available_warns(tmp_path):
    root = gray_folder(tmp_path / "g", 3)
    with pytest.warns(UserWarning, match="using all 3"):
        s = load_image_set(root, 8, samples=10)
    assert len(s) == 3


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    root = gray_folder(tmp_path / "g", 4)
    cache = tmp_path / "cache"
    first = load_image_set(root, 8, cache_dir=cache)
    (npy,) = cache.glob("*.npy")
    assert npy.name.startswith("g-8px-") and not list(cache.glob("*.tmp"))

    def no_decode(*args):
        raise AssertionError("decoded although the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(data, "decode_image", no_decode)
        again = load_image_set(root, 8, cache_dir=cache)
    assert np.array_equal(first.images, again.images) and again.images.dtype == np.uint8
    assert (again.name, again.num_available, again.skipped) == ("g", 4, 0)

    npy.write_bytes(npy.read_bytes()[:100])  # truncated cache file
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_image_set(root, 8, cache_dir=cache)
    assert np.array_equal(first.images, rebuilt.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(load_image_set(root, 8, cache_dir=cache).images, first.images)

    write(root / "new.png", encode(solid(1, mode="L")))  # source changed: new cache entry
    assert len(load_image_set(root, 8, cache_dir=cache)) == 5
    assert len(list(cache.glob("*.npy"))) == 2


# --------------------------------------------------------------------------- shared data


@pytest.mark.skipif(not (SHARED_DATA / "bedrooms-128.tar").exists(), reason="no shared data")
def test_bedrooms_tar_subset():
    s = load_image_set(SHARED_DATA / "bedrooms-128.tar", 64, samples=50)
    assert s.images.shape == (50, 64, 64, 3)
    assert (s.name, s.num_available, s.skipped) == ("bedrooms-128", 2911, 0)
    assert 40 < s.images.mean() < 220 and s.images.std() > 20
