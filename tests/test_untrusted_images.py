"""Images and files handed over by a user are untrusted: ``data.decode_image`` (JPEG, PNG, WebP by
signature; a pixel limit read from the header before decoding) and ``files.read_regular_file``
(regular files under a size cap), as used by the data sets, the app's uploads and the CLI."""

from __future__ import annotations

import io
import os
import signal
import struct
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_core import data
from diffusion_core.data import MAX_PIXELS, DataError, decode_image, load_image_set, sniff_format
from diffusion_core.files import MAX_FILE_BYTES, read_regular_file


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A PNG whose header claims width x height grayscale pixels at ``bit_depth``, with one
    compressed row of zeros: a decompression bomb's shape, a few hundred bytes on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + width * bit_depth // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


@pytest.fixture
def no_hang():
    """Fail instead of hanging (a FIFO opened for reading waits for a writer)."""
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("hung reading a file"))
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- formats


def test_formats_by_signature_not_by_name(tmp_path):
    png = encode(Image.new("RGB", (8, 8), (0, 255, 0)))
    assert sniff_format(png) == "PNG"
    assert sniff_format(encode(Image.new("RGB", (8, 8)), "JPEG")) == "JPEG"
    assert sniff_format(encode(Image.new("RGB", (8, 8)), "WEBP")) == "WEBP"
    (tmp_path / "named.jpg").write_bytes(png)  # a PNG with a JPEG name is read as the PNG it is
    assert np.all(decode_image(tmp_path / "named.jpg", 8) == (0, 255, 0))


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "ICO", "PCX", "SGI", "TGA", "PPM"])
def test_other_formats_refused_by_name(fmt):
    payload = encode(Image.new("RGB", (16, 16), (200, 10, 10)), fmt)
    assert sniff_format(payload) is None
    with pytest.raises(DataError, match="not a JPEG, PNG or WebP file"):
        decode_image(payload, 8)


def test_folder_with_foreign_formats_skips_them(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "tiff.png").write_bytes(encode(Image.new("RGB", (8, 8)), "TIFF"))
    (tmp_path / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable .*not a JPEG, PNG or WebP"):
        s = load_image_set(tmp_path, 8)
    assert (len(s), s.skipped) == (1, 2) and np.all(s.images[0] == (1, 2, 3))


def test_corrupt_data_of_a_right_signature_is_one_message():
    good = encode(Image.new("RGB", (32, 32), (9, 9, 9)), "JPEG")
    for broken in (good[:40], good[:3] + b"\0" * 50, b"\x89PNG\r\n\x1a\n" + b"\xff" * 30):
        with pytest.raises(DataError, match="not a readable image"):
            decode_image(broken, 8)


# --------------------------------------------------------------------------- pixel limit


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, at 89M pixels
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_decompression_bomb_refused_from_the_header(bit_depth):
    """13000 x 13000 (169M pixels, under Pillow's own bomb limit at 16 bits' 179M): refused by its
    header, in milliseconds, with the limit in the message; decoding it took 1.5-3 GiB."""
    bomb = png_header_only(13000, 13000, bit_depth)
    assert len(bomb) < 2000
    with pytest.raises(DataError, match=r"13000x13000 = 169,000,000 pixels, more than the limit of "
                                        r"40,000,000 pixels \(MAX_PIXELS\)"):
        decode_image(bomb, 64)


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    img = encode(Image.new("L", (100, 100), 50))
    monkeypatch.setattr(data, "MAX_PIXELS", 100 * 100)
    assert np.all(decode_image(img, 8) == 50)  # at the limit: decoded
    monkeypatch.setattr(data, "MAX_PIXELS", 100 * 100 - 1)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an image over the limit"))
    with pytest.raises(DataError, match="100x100 = 10,000 pixels"):
        decode_image(img, 8)
    assert MAX_PIXELS == 40_000_000


def test_sixteen_bit_values_and_no_wide_copies():
    """16-bit gray scales by 1/256 (65535 -> 255, 32768 -> 128, 255 -> 0) with at most ~5 bytes of
    numpy memory per pixel (an int64 copy alone took 8)."""
    wide = np.zeros((1000, 1000), np.uint16)
    wide[:, :250], wide[:, 250:500], wide[:, 500:750], wide[:, 750:] = 65535, 32768, 256, 255
    payload = encode(Image.fromarray(wide))
    with Image.open(io.BytesIO(payload)) as img:
        assert img.mode.startswith("I;16")
        img.load()
        tracemalloc.start()
        rgb = data._to_rgb(img)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 5.5 * wide.size, peak
    out = np.asarray(rgb)
    assert [int(out[0, c, 0]) for c in (0, 250, 500, 750)] == [255, 128, 1, 0]
    assert np.all(out[..., 0] == out[..., 2])
    assert np.all(decode_image(payload, 8)[:, 0] == 255)  # the left eighth of the image


def test_thirty_two_bit_gray_clipped_to_sixteen():
    values = np.array([[70000, -5, 65535, 512]], np.int32).repeat(4, axis=0)
    out = np.asarray(data._to_rgb(Image.fromarray(values, mode="I")))
    assert out[0, :, 0].tolist() == [255, 0, 255, 2]


# --------------------------------------------------------------------------- conversion and JPEG draft


def test_large_jpeg_decoded_at_reduced_scale(monkeypatch):
    """A 1024x768 JPEG for 16 px is decoded at 1/8 scale (128x96, still over 4x the output), and the
    result stays within a few levels of decoding it whole."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((64, 64, 1))).astype(np.uint8)
    payload = encode(Image.fromarray(smooth), "JPEG", quality=95)
    seen = []
    real = data.preprocess_image
    monkeypatch.setattr(data, "preprocess_image", lambda img, s: seen.append(img.size) or real(img, s))
    drafted = decode_image(payload, 16)
    assert seen == [(128, 96)]
    with Image.open(io.BytesIO(payload)) as whole:
        whole.load()
        reference = real(whole, 16)
    assert np.abs(drafted.astype(int) - reference).mean() < 3
    decode_image(encode(Image.fromarray(smooth[:256, :256]), "JPEG"), 64)  # not 8x the output: whole
    assert seen[-1] == (256, 256)


def test_cmyk_palette_and_alpha_become_rgb():
    cmyk = encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", quality=95)
    assert np.abs(decode_image(cmyk, 8).astype(int) - 255).max() <= 2
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert np.all(decode_image(encode(pal), 8) == (200, 100, 50))
    pal.info["transparency"] = 1  # palette entry 1 transparent: white
    assert np.all(decode_image(encode(pal, transparency=1), 8) == 255)
    rgba = encode(Image.new("RGBA", (8, 8), (10, 20, 30, 0)), "WEBP", lossless=True)
    assert np.all(decode_image(rgba, 8) == 255)


# --------------------------------------------------------------------------- regular files only


def test_read_regular_file_refuses_what_is_not_a_file(tmp_path, no_hang):
    ok = tmp_path / "ok.bin"
    ok.write_bytes(b"abc")
    assert read_regular_file(ok) == b"abc"
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "dir.jpg").mkdir()
    for name, kind in (("pipe.jpg", "a pipe"), ("zero.jpg", "a device"), ("dir.jpg", "a folder")):
        with pytest.raises(ValueError, match=f"{name} is {kind}.*, not a regular file"):
            read_regular_file(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no file at .*missing.jpg"):
        read_regular_file(tmp_path / "missing.jpg")


def test_read_regular_file_size_cap(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(2 * 2**30)  # sparse: no disk used; reading it whole took 2.6 GiB
    with pytest.raises(ValueError, match=r"big.jpg is 2048.0 MiB, more than the 64 MiB limit for one file"):
        read_regular_file(big)
    assert MAX_FILE_BYTES == 64 * 2**20
    small = tmp_path / "small"
    small.write_bytes(b"x" * 11)
    assert read_regular_file(small, max_bytes=11) == b"x" * 11
    with pytest.raises(ValueError, match="small is .* MiB, more than the .* MiB limit for one file"):
        read_regular_file(small, max_bytes=10)


def test_data_folder_skips_pipes_devices_and_huge_files(tmp_path, no_hang):
    for i in range(2):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"{i}.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "x.jpg").symlink_to("/dev/zero")
    with open(tmp_path / "sparse.jpg", "wb") as f:
        f.truncate(2 * 2**30)
    with pytest.warns(UserWarning, match="skipped 3 unreadable") as caught:
        s = load_image_set(tmp_path, 8)
    assert (len(s), s.skipped) == (2, 3)
    assert np.all(s.images[1] == 40)
    message = str(caught[0].message)
    assert "pipe" in message and "device" in message and "MiB limit" in message


def test_tar_member_over_the_cap_is_skipped_unread(tmp_path, monkeypatch):
    small = encode(Image.new("L", (8, 8), 7))
    path = tmp_path / "set.tar"
    with tarfile.open(path, "w") as tf:
        for name, payload in (("a.png", small), ("b.png", small + b"\0" * 5000)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 4096)
    with pytest.warns(UserWarning, match=r"b.png \(DataError: member of .* MiB, more than the .* MiB limit"):
        s = load_image_set(path, 8)
    assert (len(s), s.skipped) == (1, 1) and np.all(s.images == 7)
    with pytest.raises(DataError, match="limit for one file"):
        decode_image(small + b"\0" * 5000, 8)  # bytes handed over (an upload) under the same cap
