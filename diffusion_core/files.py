"""Files on disk: the one atomic writer and the one validator of tensors read from disk.

Writing: every file the project writes for another process or a later run to read (checkpoints,
training state, descriptions, caches, statistics, sample grids) goes through ``atomic_write``:
written to a temporary file beside the target, flushed to the disk (fsync), renamed over the
target, then the folder's entry flushed too. A reader sees the old file or the new one, never
half of one, and a crash or power cut leaves one of the two.

Leftovers: a writer killed mid-write leaves its temporary file (``.NAME.*.tmp``); the next write
of the same target removes those older than ``STALE_TEMPORARY_S`` (a live writer keeps writing to
its own), and ``remove_temporaries`` clears a folder that one process owns (a training run).

Locking: ``file_lock`` serialises read-modify-write cycles on one file across threads and
processes (an advisory lock on a ``.NAME.lock`` file beside it).

Reading: every dict of tensors read from a file (checkpoint weights, training state, FID Inception
weights, the app's header check) passes ``validate_tensors`` before use: the names and shapes
that the network implies, a floating dtype that the network can take (float16, bfloat16 or
float32; an integer only where the network holds one, such as BatchNorm's step counter), and
finite values. A small file a user hands over whole (an image to invert, a training image) is read
with ``read_regular_file``: a regular file of at most ``MAX_FILE_BYTES``, never a FIFO (which would
wait forever), a device (``/dev/zero`` never ends) or a folder.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import torch

try:
    import fcntl
    msvcrt = None
except ImportError:  # Windows
    fcntl = None
    try:
        import msvcrt
    except ImportError:
        msvcrt = None

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what weights may be stored in


def _read_umask() -> int:
    """The process's umask. Reading it means setting it, so this runs once, at import: the app
    serves many sessions from threads, and a file another thread created while the mask was 0
    would be world-writable."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # the mode a plain open() gives a new file (mkstemp's own is 0600)
MAX_FILE_BYTES = 64 * 2**20  # the largest single file (an image, a tar member) read whole


def _kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The whole content of ``path``, a file a user handed over: a regular file (or a link to one) of at
    most ``max_bytes``. A folder, FIFO, socket or device is refused before anything is read (a FIFO is
    opened without waiting for a writer), and so is a file over the cap, by its size and again while
    reading (it may grow). Raises FileNotFoundError when nothing is there, ValueError naming the file
    and the reason otherwise."""
    path = Path(path)
    try:
        kind = _kind_of(os.stat(path).st_mode)  # follows links: a link to /dev/zero is a device
        if kind is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"no file at {path}") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if kind is not None:
        raise ValueError(f"{path} is {kind}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        kind = _kind_of(info.st_mode)  # it may have been replaced between stat and open
        if kind is not None:
            raise ValueError(f"{path} is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size / 2**20:.1f} MiB, more than the "
                             f"{max_bytes / 2**20:g} MiB limit for one file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is larger than the {max_bytes / 2**20:g} MiB limit for one file")
    return data


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename is durable only then). Not possible everywhere (Windows
    opens no folders): there the rename is as durable as the system makes it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace(tmp: str, path: Path) -> None:
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


STALE_TEMPORARY_S = 600.0  # a temporary file unchanged this long belongs to a writer that died


def _temporaries(folder: Path, name: str = "*") -> list[Path]:
    """The temporary files of ``atomic_write`` in ``folder`` (of the target ``name``, or all)."""
    target = name if name == "*" else glob.escape(name)
    return [p for p in folder.glob(f".{target}.*.tmp") if p.is_file()]


def remove_temporaries(folder: str | os.PathLike, name: str = "*", older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (of the target ``name``,
    or all), those unchanged for ``older_than_s`` seconds; returns what was deleted."""
    now, removed = time.time(), []
    for p in _temporaries(Path(folder), name):
        try:
            if now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                removed.append(p)
        except OSError:  # gone meanwhile, or not ours to delete
            pass
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock for ``path`` (on ``.NAME.lock`` beside it, created if
    missing and left in place: deleting a lock file races with its next user) for the ``with``
    block. Blocks until the lock is free; threads of one process exclude each other too (each
    call opens its own file). Where the system has neither ``fcntl`` nor ``msvcrt``, no lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif msvcrt is not None:
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_json(path: str | os.PathLike, max_bytes: int, error: type[Exception], what: str) -> Any:
    """The JSON value of an untrusted file of at most ``max_bytes`` (``what`` it should be, for the
    message): anything else (too large, not UTF-8, not JSON, an integer of over 4,300 digits,
    absurd nesting) raises ``error`` naming the file."""
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise error(f"{path} is too large to be {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise error(f"{path} is not valid JSON: {str(e)[:200]}") from e


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, open (fd, name), once dead writers' temporaries of
    the same target are removed. The folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path.parent, path.name, STALE_TEMPORARY_S)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes into a binary file ``f``, atomically
    and durably (see the module doc). The folder is made if missing. Returns the path."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``atomic_write`` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file of ``tensors`` (copied to the CPU, contiguous), atomically and durably."""
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _names(names: list[str]) -> str:
    return f"{names[:3]}{'...' if len(names) > 3 else ''}"


def validate_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], where: str, *,
                     against: str = "the network", optional: frozenset[str] | set[str] = frozenset(),
                     files: Mapping[str, Any] | None = None, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless ``tensors`` (read from disk) can stand for ``expected`` (e.g. a
    network's ``state_dict()``, on any device, the meta device included):

    - the same names (those in ``optional`` may be missing), each with the expected shape;
    - a floating tensor stored as float16, bfloat16 or float32; an integer tensor as an integer;
    - finite values (not checked for tensors on the meta device: a header carries no values).

    Messages name ``where`` (the file, or the description that lists the files) and the tensor;
    ``files`` maps a tensor's name to the file it came from, where several files hold them.
    ``against`` names what the tensors should match, e.g. "the description"."""
    files = files or {}
    missing = sorted(set(expected) - set(tensors) - set(optional))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise error(f"{where}: weights do not match {against} (missing {_names(missing)}, unexpected {_names(extra)})")
    for name, t in tensors.items():
        ref = expected[name]
        at = files.get(name, where)
        if tuple(t.shape) != tuple(ref.shape):
            raise error(f"{at}: tensor {name} has shape {tuple(t.shape)}, {against} implies {tuple(ref.shape)}")
        if ref.is_floating_point():
            if t.dtype not in FLOAT_DTYPES:
                raise error(f"{at}: tensor {name} is {str(t.dtype).removeprefix('torch.')}; "
                            "weights must be float16, bfloat16 or float32")
        elif t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise error(f"{at}: tensor {name} is {str(t.dtype).removeprefix('torch.')}, "
                        f"{against} holds an integer there")
        if t.device.type != "meta" and t.is_floating_point() and not torch.isfinite(t).all():
            raise error(f"{at}: tensor {name} holds NaN or infinite values")


# safetensors' dtype names (a file's header) -> torch dtypes, for checks that read headers only
SAFETENSORS_DTYPES = {name: getattr(torch, attr) for name, attr in {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
    "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool", "C64": "complex64"}.items()
    if hasattr(torch, attr)}


def header_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file holds, as meta tensors of their shape and dtype, from its
    header alone (no values read): what ``validate_tensors`` checks cheaply. Raises what safe_open
    raises for an unreadable file, and ValueError for a dtype that torch does not have."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            info = f.get_slice(key)
            if info.get_dtype() not in SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: tensor {key} has dtype {info.get_dtype()}, which this tool does not read")
            out[key] = torch.empty(tuple(info.get_shape()), dtype=SAFETENSORS_DTYPES[info.get_dtype()], device="meta")
    return out
