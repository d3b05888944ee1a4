"""Training images: load a folder, a tar archive or an LSUN LMDB into a uint8 array.

``load_image_set(source, image_size)`` returns an :class:`ImageSet` whose ``images`` are
uint8 ``[N, S, S, 3]`` with ``S == image_size``. What every pixel means is fixed here, because it
is part of what a checkpoint's training data means:

1. The file is decoded with Pillow by ``decode_image``, the one reader of images for the data sets,
   the app's uploads and the CLI: JPEG, PNG or WebP told by their first bytes, whatever the
   extension (anything else is unreadable); at most ``MAX_PIXELS`` pixels by the header, checked
   before decoding; a JPEG at least 8x the output side decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
   DCT scaling, ``Image.draft``) while keeping 4x the output side. It is turned upright by its
   EXIF orientation tag.
2. It becomes 8-bit RGB: grayscale is replicated, palette and CMYK go through Pillow's
   ``convert("RGB")``, 16-bit modes (``I;16*``, ``I``) are divided by 256 (65535 -> 255,
   32768 -> 128), and anything with transparency (RGBA, LA, PA, palette or RGB with a
   transparency key) is composited over white.
3. The largest centred square is cropped and resized to ``S x S`` with Pillow's antialiased
   ``BICUBIC`` filter (``reducing_gap=None``, i.e. exact).

Files are read whole only if regular and at most ``MAX_FILE_BYTES`` (``files.read_regular_file``;
tar members and LMDB values under the same cap). Unreadable entries are skipped, counted and
reported in one warning. Every problem the user can
fix raises :class:`DataError` naming the path. Bump ``CACHE_VERSION`` whenever a change here
alters the pixels produced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Literal, Protocol, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps
from PIL import JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401 (DECODE_FORMATS)
from tqdm import tqdm

from .files import MAX_FILE_BYTES, atomic_write, read_regular_file

CACHE_VERSION = 2  # 2: large JPEGs decoded at a reduced DCT scale
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
RESAMPLE = Image.Resampling.BICUBIC  # fixed: changing it changes what a checkpoint's data means
DECODE_FORMATS = ("JPEG", "PNG", "WEBP")  # JPEG includes camera MPO files
MAX_PIXELS = 40_000_000  # largest width x height decoded (a 16-bit image of this size takes ~0.5 GiB to convert)
DRAFT_MARGIN = 4  # a JPEG is decoded at reduced scale only down to this many times the output side
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}

SourceKind = Literal["folder", "tar", "lmdb"]
Fetch = Callable[[], bytes]


class DataError(ValueError):
    """A problem with the data the user pointed at (missing, empty, unsupported, bad option)."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Decoded training images.

    images: uint8 [N, H, W, 3] with H == W == image_size, C-contiguous, in source order
        (sorted relative path, member name or LMDB key).
    name: short data-set name, e.g. "bedrooms-128".
    source: absolute path of the source.
    num_available: readable images found before subsetting (see ``load_image_set``).
    skipped: unreadable (or unsafe) entries skipped.
    """

    images: np.ndarray
    name: str
    source: str
    num_available: int
    skipped: int

    def __post_init__(self) -> None:
        a = self.images
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1] != a.shape[2] or a.shape[3] != 3:
            raise ValueError(f"images must be uint8 [N, S, S, 3], got {a.dtype} {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError("images must be C-contiguous")

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- pixels


def preprocess_image(img: Image.Image, image_size: int) -> np.ndarray:
    """Turn one opened image into training pixels.

    img: a loaded PIL image of any mode and size (W x H).
    Returns: uint8 [S, S, 3] with S == image_size: upright, 8-bit RGB, centre-cropped to
        min(W, H) squared, resized with antialiased bicubic.
    """
    _check_image_size(image_size)
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        img = ImageOps.exif_transpose(img)
    rgb = _to_rgb(img)
    w, h = rgb.size
    side = min(w, h)
    if side < 1:
        raise ValueError(f"empty image {w}x{h}")
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    if side != image_size:
        square = square.resize((image_size, image_size), RESAMPLE, reducing_gap=None)
    out = np.array(square, dtype=np.uint8)  # [S, S, 3], owned and writable
    assert out.shape == (image_size, image_size, 3), out.shape
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit scaled by 1/256, alpha over white)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(img)  # [H, W] uint16 (I;16, any byte order) or int32 (I: assumed 16-bit)
        if wide.dtype.kind == "i":
            wide = np.clip(wide, 0, 65535)
        gray = (wide >> 8).astype(np.uint8)  # 65535 -> 255, 32768 -> 128, without a wider copy
        return Image.fromarray(gray).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def sniff_format(data: bytes) -> str | None:
    """"JPEG", "PNG" or "WEBP" by the file's first bytes (its signature), else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(source: bytes | str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode one untrusted image (its bytes, or a path read with ``read_regular_file``) into
    training pixels: uint8 [S, S, 3] with S == image_size (steps 1-3 of the module doc).

    Raises DataError (a ValueError) with a one-line reason for anything that is not a JPEG, PNG or
    WebP image within ``MAX_FILE_BYTES`` and ``MAX_PIXELS``; a path's message names the file.
    FileNotFoundError when a path does not exist.
    """
    _check_image_size(image_size)
    where = ""
    if not isinstance(source, (bytes, bytearray, memoryview)):
        where = f"{source}: "
        try:
            source = read_regular_file(source, MAX_FILE_BYTES)
        except FileNotFoundError:
            raise FileNotFoundError(f"no image at {source}") from None
        except ValueError as e:
            raise DataError(str(e)) from None
    data = bytes(source)
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{where}image of {len(data) / 2**20:.1f} MiB, more than the "
                        f"{MAX_FILE_BYTES / 2**20:g} MiB limit for one file")
    fmt = sniff_format(data)
    if fmt is None:
        raise DataError(f"{where}not a readable image: not a JPEG, PNG or WebP file")
    try:
        with Image.open(io.BytesIO(data), formats=(fmt,)) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{where}image of {w}x{h} = {w * h:,} pixels, more than the limit of "
                                f"{MAX_PIXELS:,} pixels (MAX_PIXELS) for one image")
            if fmt == "JPEG":
                img.draft(img.mode, (DRAFT_MARGIN * image_size, DRAFT_MARGIN * image_size))
            img.load()
            return preprocess_image(img, image_size)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or hostile data: every failure is the file's
        raise DataError(f"{where}not a readable image: {type(e).__name__}: {str(e)[:200]}") from e


# --------------------------------------------------------------------------- sources


def detect_source_kind(source: str | os.PathLike) -> SourceKind:
    """Say what ``source`` is: an image "folder", a "tar" archive, or an "lmdb" directory.

    An LMDB is a directory holding ``data.mdb`` (or the ``data.mdb`` file itself).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    if path.is_dir():
        return "lmdb" if (path / "data.mdb").is_file() else "folder"
    if path.name == "data.mdb":
        return "lmdb"
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "tar"
    raise DataError(
        f"unsupported data source: {path} is a file but not a .tar, .tar.gz or .tgz archive; "
        "point at an image folder, such an archive, or an LSUN LMDB directory"
    )


def _source_name(path: Path, kind: SourceKind) -> str:
    """Short name: folder name, archive stem without its suffix, or LMDB directory name."""
    if kind == "lmdb" and path.name == "data.mdb":
        path = path.parent
    name = path.name
    for suffix in ARCHIVE_SUFFIXES if kind == "tar" else ():
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Source(Protocol):
    """Entries of one source: ``signature`` is cheap (for the cache key), ``list()`` fills
    ``labels`` (sorted entry names) and ``unsafe``, ``read`` yields (index, fetch-bytes)."""

    path: Path
    signature: list[int]
    labels: list[str]
    unsafe: list[str]

    def list(self) -> None: ...
    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Fetch]]: ...
    def close(self) -> None: ...


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _FolderSource:
    """Image files under a folder, recursively, sorted by relative POSIX path."""

    def __init__(self, root: Path):
        found = []  # (relative path, size, mtime_ns)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in filenames:
                if _is_image_name(fn):
                    st = os.stat(os.path.join(dirpath, fn))
                    rel = Path(dirpath, fn).relative_to(root).as_posix()
                    found.append((rel, st.st_size, st.st_mtime_ns))
        found.sort()
        self.path = root
        self.labels = [rel for rel, _, _ in found]
        self.unsafe: list[str] = []
        latest = max((mtime for _, _, mtime in found), default=0)
        self.signature = [len(found), sum(size for _, size, _ in found), latest]

    def list(self) -> None:
        pass  # listed in __init__: the cache key needs the file count and mtimes

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Fetch]]:
        for i in indices:
            yield i, lambda p=self.path / self.labels[i]: read_regular_file(p, MAX_FILE_BYTES)

    def close(self) -> None:
        pass


class _TarSource:
    """Regular image members of a tar archive, sorted by name, read without extracting."""

    def __init__(self, path: Path):
        st = path.stat()
        self.path, self.signature = path, [st.st_size, st.st_mtime_ns]
        self._tar: tarfile.TarFile | None = None

    def list(self) -> None:
        """Read the member headers (for .gz this decompresses the archive once)."""
        try:
            self._tar = tarfile.open(self.path, "r:*")
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read archive {self.path}: {e}") from e
        files = [m for m in members if m.isfile() and _is_image_name(m.name)]
        self.unsafe = [m.name for m in files if not _is_safe_member(m.name)]
        safe = [m for m in files if _is_safe_member(m.name)]
        self._members = sorted(safe, key=lambda m: m.name)
        self.labels = [m.name for m in self._members]

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Fetch]]:
        # In archive order, so a .gz stream is only rewound once.
        for i in sorted(indices, key=lambda i: self._members[i].offset_data):
            yield i, lambda m=self._members[i]: _read_member(self._tar, m)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A member's bytes, if it is at most MAX_FILE_BYTES (its size is in its header)."""
    if member.size > MAX_FILE_BYTES:
        raise DataError(f"member of {member.size / 2**20:.1f} MiB, more than the "
                        f"{MAX_FILE_BYTES / 2**20:g} MiB limit for one file")
    return tar.extractfile(member).read(MAX_FILE_BYTES)


def _is_safe_member(name: str) -> bool:
    """False for absolute member names and names with a '..' component."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    absolute = name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
    return not absolute and ".." not in parts


class _LmdbSource:
    """Values of an LSUN-style LMDB (encoded WebP/JPEG), sorted by key."""

    def __init__(self, path: Path):
        self.path = path.parent if path.name == "data.mdb" else path
        st = (self.path / "data.mdb").stat()
        self.signature = [st.st_size, st.st_mtime_ns]
        self.unsafe: list[str] = []
        self._env = None

    def list(self) -> None:
        try:
            import lmdb
        except ImportError as e:
            raise DataError(f"{self.path} is an LMDB database; to read it: pip install lmdb") from e
        try:
            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False,
                                  meminit=False, max_readers=1)
            with self._env.begin() as txn:
                self._keys = sorted(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as e:
            raise DataError(f"cannot read LMDB {self.path}: {e}") from e
        self.labels = [k.decode("utf-8", "replace") for k in self._keys]

    def read(self, indices: Sequence[int]) -> Iterator[tuple[int, Fetch]]:
        with self._env.begin() as txn:
            for i in indices:
                yield i, lambda key=self._keys[i]: txn.get(key)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()


def _open_source(path: Path, kind: SourceKind) -> _Source:
    return {"folder": _FolderSource, "tar": _TarSource, "lmdb": _LmdbSource}[kind](path)


# --------------------------------------------------------------------------- decoding


def _decode_selection(src: _Source, image_size: int, samples: int | None, seed: int, desc: str,
                      progress: bool):
    """Decode all entries, or a seeded random subset of ``samples`` readable ones.

    Subset: entries are visited in the order of ``default_rng(seed).permutation(n)``; the first
    ``samples`` readable ones are kept, in sorted index order. That is a uniform random subset of
    the readable images, and only about ``samples`` entries are decoded.

    Returns (images uint8 [K, S, S, 3] in index order, failures [(label, reason)]).
    """
    n = len(src.labels)
    if samples is None or samples >= n:
        order, want = np.arange(n), n
    else:
        order, want = np.random.default_rng(seed).permutation(n), samples
    images = _allocate(want, image_size, src)
    row_index = np.full(want, -1, dtype=np.int64)  # entry index held by each row, -1 = empty
    failures: list[tuple[str, str]] = []
    pos = 0
    with tqdm(total=want, desc=desc, unit="img", disable=not progress) as bar:
        while pos < n and (holes := np.flatnonzero(row_index < 0)).size:
            batch = np.sort(order[pos : pos + holes.size])
            pos += batch.size
            row_of = {int(i): int(r) for i, r in zip(batch, holes)}
            for i, fetch in src.read([int(i) for i in batch]):
                try:
                    images[row_of[i]] = decode_image(fetch(), image_size)
                except Exception as e:  # corrupt, truncated, not an image, decompression bomb
                    failures.append((src.labels[i], f"{type(e).__name__}: {e}"))
                    continue
                row_index[row_of[i]] = i
                bar.update(1)
    keep = np.flatnonzero(row_index >= 0)
    keep = keep[np.argsort(row_index[keep], kind="stable")]
    if keep.size != want or np.any(keep != np.arange(want)):
        images = images[keep]  # copy only when entries failed or a retry broke the order
    return images, failures


def _allocate(count: int, image_size: int, src: _Source) -> np.ndarray:
    try:
        return np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    except MemoryError as e:
        gib = count * image_size * image_size * 3 / 2**30
        raise DataError(f"{count} images at {image_size}px need {gib:.1f} GiB of memory; "
                        f"pass samples= to load a subset of {src.path}") from e


# --------------------------------------------------------------------------- cache


def _cache_paths(cache_dir: Path, name: str, key: str, image_size: int) -> tuple[Path, Path]:
    stem = f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{image_size}px-{key[:20]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _cache_load(npy: Path, meta_path: Path, key: str, image_size: int):
    """Return (images, num_available, skipped, warnings) from the cache, or None if absent/bad."""
    if not npy.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(npy, allow_pickle=False)
        expected = (meta["count"], image_size, image_size, 3)
        if meta["key"] != key or images.dtype != np.uint8 or images.shape != expected:
            raise ValueError(f"does not match its metadata (shape {images.shape})")
        hit = np.ascontiguousarray(images), int(meta["num_available"]), int(meta["skipped"])
        return *hit, [str(m) for m in meta["warnings"]]
    except Exception as e:
        warnings.warn(f"ignoring unreadable cache file {npy} ({e}); rebuilding it", stacklevel=3)
        return None


def _cache_save(npy: Path, meta_path: Path, images: np.ndarray, meta: dict) -> None:
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(npy, lambda f: np.save(f, images, allow_pickle=False))
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    except OSError as e:
        warnings.warn(f"could not write cache {npy}: {e}", stacklevel=3)


# --------------------------------------------------------------------------- entry point


def load_image_set(
    source: str | os.PathLike,
    image_size: int,
    samples: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> ImageSet:
    """Load training images from a folder, a .tar/.tar.gz/.tgz archive or an LSUN LMDB.

    source: image folder (recursive; .jpg/.jpeg/.png/.webp), tar archive (members sorted by name,
        never extracted; absolute or '..' names skipped and counted), or LMDB directory.
    image_size: S, side of the square output, 8 <= S <= 1024.
    samples: keep a seeded random subset of this many readable images (sorted order kept);
        None keeps all. More than available: all are kept, with a warning.
    seed: integer seed of ``np.random.default_rng`` for the subset.
    cache_dir: if given, the decoded array is cached there as .npy (keyed by source path,
        size/mtime, S, samples, seed and CACHE_VERSION) and reused.
    progress: show a tqdm bar while decoding.
    Returns: ImageSet with images uint8 [N, S, S, 3]. With a subset, only the visited entries
        are decoded, so num_available counts the entries not found unreadable.
    """
    _check_image_size(image_size)
    if samples is not None and not (_is_int(samples) and samples > 0):
        raise DataError(f"samples must be a positive integer or None, got {samples!r}")
    if not _is_int(seed):
        raise DataError(f"seed must be an integer, got {seed!r}")
    image_size, seed = int(image_size), int(seed)
    samples = None if samples is None else int(samples)
    path = Path(os.path.abspath(Path(source).expanduser()))
    kind = detect_source_kind(path)
    name = _source_name(path, kind)
    src = _open_source(path, kind)
    key = hashlib.sha256(json.dumps(
        [CACHE_VERSION, str(path), kind, src.signature, image_size, samples, seed, RESAMPLE.name]
    ).encode()).hexdigest()
    hit = None
    if cache_dir is not None:
        npy, meta_path = _cache_paths(Path(cache_dir).expanduser(), name, key, image_size)
        hit = _cache_load(npy, meta_path, key, image_size)
    if hit is None:
        hit = _load_uncached(src, image_size, samples, seed, progress, f"decoding {name}")
        if cache_dir is not None:
            images, num_available, skipped, messages = hit
            meta = {"key": key, "count": len(images), "num_available": num_available,
                    "skipped": skipped, "warnings": messages, "source": str(path)}
            _cache_save(npy, meta_path, images, meta)
    images, num_available, skipped, messages = hit
    for message in messages:
        warnings.warn(message, stacklevel=2)
    return ImageSet(images, name, str(path), num_available, skipped)


def _load_uncached(src: _Source, image_size: int, samples: int | None, seed: int,
                   progress: bool, desc: str):
    """List and decode ``src``. Returns (images [N, S, S, 3], num_available, skipped, warnings)."""
    try:
        src.list()
        if not src.labels and not src.unsafe:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {src.path}")
        images, failures = _decode_selection(src, image_size, samples, seed, desc, progress)
    finally:
        src.close()
    num_available = len(src.labels) - len(failures)
    failures = [(label, "unsafe member name") for label in src.unsafe] + failures
    if len(images) == 0:
        raise DataError(f"no readable images in {src.path} "
                        f"({len(failures)} unreadable or unsafe entries)")
    return images, num_available, len(failures), _report(failures, len(images), samples, src.path)


def _report(failures: list[tuple[str, str]], count: int, samples: int | None,
            path: Path) -> list[str]:
    """Warning messages for skipped entries and for a subset larger than what was available."""
    messages = []
    if failures:
        examples = "; ".join(f"{label} ({reason})" for label, reason in failures[:3])
        messages.append(f"skipped {len(failures)} unreadable file(s) in {path}, e.g. {examples}")
    if samples is not None and count < samples:
        messages.append(f"requested {samples} samples but only {count} readable images in "
                        f"{path}; using all {count}")
    return messages


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_image_size(image_size: int) -> None:
    if not (_is_int(image_size) and MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise DataError(f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], "
                        f"got {image_size!r}")
