"""Finding checkpoints and what is known about them: descriptions, loss logs, sample grids.

Plain Python (no streamlit): every function here returns data or raises ``ValueError``. A folder
is scanned without loading any weights; each checkpoint becomes an ``Entry`` that is either usable
or carries the reason it is not (the message of a ``CheckpointError``).

``results/descriptions/`` holds the description of every experiment trained on the GPU, also of those
whose weights do not ship (``"not_shipped": REASON``): they become rows of the experiments table
too, with their facts and FID, so no trained experiment is missing from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from diffusion_core.checkpoint import (CheckpointError, experiment_from_description, normalization_from_description,
                                       read_description, read_description_file)
from diffusion_core.diffusers_import import DiffusersError, current_name, find_pipeline, read_pipeline, weight_file
from diffusion_core.files import header_tensors, validate_tensors
from diffusion_core.guidance import description_mismatches
from diffusion_core.networks import build_network, count_parameters
from diffusion_core.training import STATE_TENSORS

FOLDER_ENV = "DIFFUSION_EXPLORER_CHECKPOINTS"
REPO_ROOT = Path(__file__).resolve().parent.parent
NOT_CHECKPOINTS = {"state.json"}  # a training run's resume state sits beside its model.json
MAX_LOG_BYTES = 64 << 20
RESULTS_FOLDER = REPO_ROOT / "results" / "descriptions"  # descriptions of every experiment trained on the GPU
NOT_RESULTS = {"floors.json"}  # real-vs-real FID floors per resolution, not an experiment
SHIPPED = "available"  # the "weights" column of a checkpoint whose weights are at hand
RATIO_NOTE = ("FID at equal N divided by the real-vs-real floor at the same N (samples against one half of the "
              "training images, beside the FID between the two halves; mean of three splits): 1 means "
              "indistinguishable from real images at this N. Empty where it was not measured.")

log = logging.getLogger("explorer_ui")

HOW_TO_MAKE_ONE = (
    "python -m diffusion_core train experiments/ddim_01.toml --data PATH --out runs/ddim_01\n"
    "python -m diffusion_core export runs/ddim_01 checkpoints/ddim_01"
)


def default_folder() -> Path:
    """The checkpoint folder the app opens on: ``$DIFFUSION_EXPLORER_CHECKPOINTS`` or ``checkpoints/``."""
    value = os.environ.get(FOLDER_ENV, "").strip()
    return Path(value).expanduser() if value else REPO_ROOT / "checkpoints"


@dataclass(frozen=True)
class Entry:
    """One checkpoint found in a folder: usable (``error`` is None) or not, with the reason."""

    path: Path  # the .json description (or the stray file that made the entry)
    name: str  # the description's name, else the file stem
    label: str  # unique name shown in pickers
    description: dict[str, Any] | None = field(default=None, repr=False, compare=False, hash=False)
    error: str | None = None
    log_path: Path | None = None  # JSON-lines loss log, when there is one
    sample_path: Path | None = None  # a sample grid PNG, when there is one

    @property
    def usable(self) -> bool:
        return self.error is None


def file_stamps(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) per existing file: a cache key that changes when a file does."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((p.name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p.name, 0, -1))
    return tuple(out)


def checkpoint_files(json_path: Path, description: dict[str, Any] | None) -> list[Path]:
    if json_path.is_dir():  # a diffusers folder: the files it is read from
        try:
            folder = find_pipeline(json_path)
            return [folder.unet / "config.json", folder.scheduler, weight_file(folder)]
        except (DiffusersError, OSError, AttributeError):  # not (or no longer) a usable pipeline folder
            return [json_path]
    files = [json_path]
    if description:
        files += [json_path.parent / f for f in description.get("weights_files", [])]
    return files


def folder_stamp(folder: Path) -> tuple:
    """Stamps of every file that could change a scan of ``folder`` (and its run sub-folders)."""
    if not folder.is_dir():
        return ()
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        paths += sorted(sub.glob("*.json")) + sorted(sub.glob("*.safetensors")) + sorted(sub.glob("samples/*.png"))
    return tuple((str(p.relative_to(folder)),) + file_stamps([p])[0][1:] for p in paths)


def check_weights(json_path: Path, description: dict[str, Any]) -> None:
    """Raise ``CheckpointError`` unless the weight files' headers hold exactly the tensors that the
    described network needs (names, shapes, dtypes: ``files.validate_tensors``). Reads only the
    safetensors headers and builds the network on the meta device, so it is cheap enough to run on
    every listed checkpoint; ``load_checkpoint`` repeats these checks (and checks the values) when
    the model is loaded. The description's numbers are checked too: bounds, the network's size and
    memory budget (measured without allocating), a finite positive normalisation."""
    where = str(json_path)
    experiment = experiment_from_description(description, where)
    normalization_from_description(description, where)
    with torch.device("meta"):
        expected = build_network(experiment.network).state_dict()
    found: dict[str, torch.Tensor] = {}  # meta tensors: shapes and dtypes from the headers
    files: dict[str, Path] = {}
    for name in description["weights_files"]:
        wpath = json_path.parent / name
        if not wpath.is_file():
            raise CheckpointError(f"weight file {wpath} is missing")
        try:
            header = header_tensors(wpath)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{wpath} is not a readable safetensors file: {e}") from e
        found.update(header)
        files.update(dict.fromkeys(header, wpath))
    validate_tensors(found, expected, where, against="the description", files=files, error=CheckpointError)


def _sample_png(json_path: Path, name: str) -> Path | None:
    """A shipped sample grid (``results/samples/NAME.png``) or a training run's latest grid."""
    for docs in (json_path.parent.parent / "results" / "samples", REPO_ROOT / "results" / "samples"):
        for stem in dict.fromkeys((json_path.stem, name)):
            if (docs / f"{stem}.png").is_file():
                return docs / f"{stem}.png"
    grids = sorted(json_path.parent.glob("samples/*.png"))
    return grids[-1] if grids else None


def _log_file(json_path: Path) -> Path | None:
    own = json_path.with_suffix(".log.jsonl")
    if own.is_file():
        return own
    run_log = json_path.parent / "log.jsonl"  # a training run folder: model.json + log.jsonl
    return run_log if json_path.stem == "model" and run_log.is_file() else None


def _entry(json_path: Path) -> Entry:
    """The entry of one description file: whatever the file holds, an entry (unusable, with the
    reason) and never an exception, so one hostile file beside good ones spoils only its own row."""
    try:
        desc = read_description(json_path)
    except (CheckpointError, OSError) as e:
        return Entry(json_path, json_path.stem, json_path.stem, error=str(e))
    except Exception as e:  # noqa: BLE001 - any other failure on an untrusted file is that entry's
        return Entry(json_path, json_path.stem, json_path.stem, error=_unusable(json_path, e))
    name = desc.get("name") if isinstance(desc.get("name"), str) and desc.get("name") else json_path.stem
    name = name[:200]
    try:
        check_weights(json_path, desc)
        error = None
    except CheckpointError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - a description malformed in a way the core lets through
        error = _unusable(json_path, e)
    return Entry(json_path, name, name, desc, error, _log_file(json_path), _sample_png(json_path, name))


def _unusable(json_path: Path, e: BaseException) -> str:
    return f"{json_path}: unusable description ({type(e).__name__}: {str(e)[:300]})"


def _is_training_tensors(path: Path) -> bool:
    """A training run's resume tensors (``state.safetensors``, ``state-STEP.safetensors``)."""
    return path.name == "state.safetensors" or STATE_TENSORS.fullmatch(path.name) is not None


DIFFUSERS_LABEL = "diffusers"  # shown after the name of a diffusers pipeline folder


def _diffusers_entry(path: Path) -> Entry | None:
    """The entry of a diffusers pipeline folder (``diffusion_core.diffusers_import``; a hub cache
    entry too), or None if ``path`` is none. Reads its JSON files and the safetensors header only."""
    try:
        folder = find_pipeline(path)
    except (DiffusersError, OSError) as e:
        return Entry(path, path.name, f"{path.name} ({DIFFUSERS_LABEL})", error=str(e))
    if folder is None:
        return None
    label = f"{folder.name} ({DIFFUSERS_LABEL})"
    try:
        desc = read_pipeline(folder)
        weights = weight_file(folder)
        if weights.suffix == ".safetensors":
            check_diffusers_weights(desc, weights)
    except (DiffusersError, CheckpointError, OSError, ImportError) as e:
        return Entry(folder.root, folder.name, label, error=str(e))
    return Entry(folder.root, folder.name, label, desc)


def check_diffusers_weights(desc: dict[str, Any], weights: Path) -> None:
    """Raise ``CheckpointError`` unless the UNet's safetensors header holds exactly the tensors
    its config needs (as ``check_weights``: network built on the meta device). Records the
    network's parameter count in ``desc``."""
    experiment = experiment_from_description(desc, str(weights))
    with torch.device("meta"):
        network = build_network(experiment.network)
    expected = {k.removeprefix("unet."): v for k, v in network.state_dict().items()}
    desc["parameters"] = count_parameters(network)
    try:
        header = {current_name(k, set(expected)): v for k, v in header_tensors(weights).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {e}") from e
    validate_tensors(header, expected, str(weights), against="its config.json", error=CheckpointError)


def _is_training_state(path: Path) -> bool:
    return path.name in NOT_CHECKPOINTS and (path.parent / "model.json").is_file()


def scan(folder: str | os.PathLike) -> list[Entry]:
    """Every checkpoint directly in ``folder`` and in its sub-folders one level down (training
    run folders hold ``model.json``), plus stray weight files that no description names. A
    diffusers pipeline folder (``folder`` itself or a sub-folder, e.g. ``models--ORG--NAME`` of a
    Hugging Face hub cache) is one entry, labelled "(diffusers)"."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    entries: list[Entry] = []
    for where in [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pipeline = _diffusers_entry(where)  # a diffusers pipeline folder (or a hub cache entry) is one model
        if pipeline is not None:
            entries.append(pipeline)
            if where == folder:
                return entries
            continue
        found = [_entry(p) for p in sorted(where.glob("*.json")) if not _is_training_state(p)]
        named = {f for e in found if e.description for f in e.description.get("weights_files", [])}
        for w in sorted(where.glob("*.safetensors")):
            if w.name not in named and not _is_training_tensors(w):
                found.append(Entry(w, w.stem, w.stem, error=f"{w} has no description {w.with_suffix('.json').name}"))
        if where != folder:  # sub-folders: only what is clearly a checkpoint (a valid description)
            found = [e for e in found if e.description is not None]
        entries += found
    return _unique_labels(entries, folder)


def _unique_labels(entries: list[Entry], folder: Path) -> list[Entry]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.name] = counts.get(e.name, 0) + 1
    out = []
    for e in entries:
        if counts[e.name] > 1:
            try:
                where = e.path.relative_to(folder)
            except ValueError:
                where = e.path
            e = Entry(e.path, e.name, f"{e.name} ({where})", e.description, e.error, e.log_path, e.sample_path)
        out.append(e)
    return out


def merge(*lists: list[Entry]) -> list[Entry]:
    """Entries of several folders, each checkpoint once, labels unique across folders."""
    seen: set[Path] = set()
    out: list[Entry] = []
    labels: set[str] = set()
    for entries in lists:
        for e in entries:
            key = e.path.resolve()
            if key in seen:
                continue
            seen.add(key)
            label = e.label if e.label not in labels else f"{e.name} ({e.path.parent})"
            labels.add(label)
            out.append(Entry(e.path, e.name, label, e.description, e.error, e.log_path, e.sample_path))
    return out


def read_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """A JSON-lines training log as columns {"step", "epoch", "loss", "images_per_s"}; lines that
    are not JSON objects with a finite loss are skipped (a log may be cut mid-line)."""
    path = Path(path)
    if path.stat().st_size > MAX_LOG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_LOG_BYTES >> 20} MiB")
    cols: dict[str, list[float]] = {"step": [], "epoch": [], "loss": [], "images_per_s": []}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            loss = float(rec["loss"])
        except (ValueError, TypeError, KeyError):
            continue
        if not isinstance(rec, dict) or not math.isfinite(loss):
            continue
        for key in cols:
            value = rec.get(key)
            cols[key].append(float(value) if isinstance(value, (int, float)) else math.nan)
    return cols


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def description_row(label: str, description: dict[str, Any]) -> dict[str, Any]:
    """The experiments table's columns of one experiment's description, without "weights"
    (missing or malformed facts are None: the description may come from any JSON file)."""
    d = description
    exp = d.get("experiment") if isinstance(d.get("experiment"), dict) else {}
    widths = _get(exp, "network", "widths")
    wall = _number(_get(d, "training", "wall_time_s"))
    epochs = _number(_get(d, "training", "epochs_completed"))
    measured = _fid_result(d)
    return {
        "name": label,
        "FID": _number(measured.get("fid")),
        "FID / floor": _number(_get(measured, "equal_n", "ratio")),
        "family": str(exp.get("family", "")).upper() or None,
        "epochs": epochs if epochs is not None else _number(_get(exp, "train", "epochs")),
        "samples": _number(_get(exp, "data", "samples")),
        "learning rate": _number(_get(exp, "train", "learning_rate")),
        "weight decay": _number(_get(exp, "train", "weight_decay")),
        "image size": _number(_get(exp, "network", "image_size")),
        "block depth": _number(_get(exp, "network", "block_depth")),
        "widths": "-".join(str(w) for w in widths) if isinstance(widths, list) else None,
        "parameters": _number(d.get("parameters")),
        "images seen": _number(_get(d, "training", "images_seen")),
        "training time (h)": wall / 3600 if wall is not None else None,
        "KID": _number(measured.get("kid")),
        "FID samples": _number(measured.get("num_samples")),
        "seed FID (reported)": _number(exp.get("reported_fid")),
        "about": exp.get("description") if isinstance(exp.get("description"), str) else None,
    }


def table_row(entry: Entry) -> dict[str, Any]:
    """The experiments table's row of a usable checkpoint: its weights are at hand."""
    return description_row(entry.label, entry.description or {}) | {"weights": SHIPPED}


def guides(entries: Iterable[Entry], main: Entry) -> list[Entry]:
    """The usable checkpoints of ``entries`` that can guide ``main`` (autoguidance: the same
    schedule, normalisation, resolution and channels; ``guidance.description_mismatches``)."""
    return [e for e in entries if e.usable and e.path != main.path and main.description is not None
            and not description_mismatches(main.description, e.description)]


def by_fid(entries: Iterable[Entry]) -> list[int]:
    """Indices of ``entries``, the lowest recorded FID (the protocol's when there is one) first,
    then those without a FID in their order. FIDs at different resolutions are not strictly
    comparable; this only chooses where pickers start, and a user's choice is kept."""
    fids = [_number(_fid_result(e.description or {}).get("fid")) for e in entries]
    known = sorted((f, i) for i, f in enumerate(fids) if f is not None and math.isfinite(f))
    return [i for _, i in known] + [i for i, f in enumerate(fids) if f is None or not math.isfinite(f)]


def best_index(entries: Iterable[Entry]) -> int:
    """The entry a picker opens on: the lowest recorded FID (``by_fid``), else the first."""
    order = by_fid(entries)
    return order[0] if order else 0


def _fid_result(description: dict[str, Any]) -> dict[str, Any]:
    """The protocol FID of ``metrics`` if there is one, else the latest recorded evaluation
    (e.g. a smaller N on a CPU), so the table shows what is known with its sample count."""
    metrics = description.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    if metrics.get("fid") is not None:
        return metrics
    evaluations = metrics.get("evaluations")
    if not isinstance(evaluations, list):
        return {}
    runs = [r for r in evaluations if isinstance(r, dict) and r.get("fid") is not None]
    return runs[-1] if runs else {}


def unshipped_results(shown: Iterable[Entry] = (), folder: Path | None = None) -> list[dict[str, Any]]:
    """Table rows of the experiments in ``folder`` (default ``results/descriptions/``) whose weights do not
    ship, labelled by file stem, with the reason in the "weights" column. An experiment whose
    stem names one of the ``shown`` checkpoints is left out (its weights are at hand: no row
    twice). Files that are not readable descriptions are skipped, the reason logged: a page
    showing these rows never fails on them."""
    folder = RESULTS_FOLDER if folder is None else Path(folder)
    taken = {key for e in shown for key in (e.name, e.label, e.path.stem)}
    rows = []
    for path in sorted(folder.glob("*.json")):
        if path.name in NOT_RESULTS or path.stem in taken:
            continue
        try:
            desc = read_description_file(path)  # weights are neither needed nor read
        except (OSError, ValueError) as e:  # CheckpointError is a ValueError
            log.warning("results row skipped: %s", e)
            continue
        reason = desc.get("not_shipped")
        if isinstance(reason, str) and reason.strip():
            rows.append(description_row(path.stem, desc) | {"weights": reason.strip()})
    return rows


def result_sample(label: str, folder: Path | None = None) -> Path | None:
    """The sample grid shipped for a results row (``results/samples/LABEL.png``), if there is one."""
    folder = RESULTS_FOLDER if folder is None else Path(folder)
    png = folder.parent / "samples" / f"{label}.png"
    return png if png.is_file() else None
