"""Checkpoints: weights in safetensors, the full description in JSON beside them. Nothing is ever
unpickled (a diffusers folder's ``.bin``, opened by ``diffusers_import``, goes through PyTorch's
restricted loader, which builds tensors only), and every file is treated as untrusted: sizes, names, shapes, dtypes and values are
checked before use (``files.validate_tensors``); files are written atomically (``files``).

Layout of a checkpoint named ``NAME``::

    NAME.json                      description (format, experiment config, normalisation,
                                   training facts, metrics, list of weight files)
    NAME.safetensors               weights, or shards NAME-00001-of-00002.safetensors, ...

``load_checkpoint()`` is the one way to rebuild a model, for training, CLI and app alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .config import ConfigError, ExperimentConfig
from .files import atomic_save_tensors, file_lock, read_json, validate_tensors, write_json
from .model import PixelNormalization, module_device
from .networks import beyond_limits, build_network, count_parameters, over_budget

FORMAT = "diffusion-explorer/1"
MAX_DESCRIPTION_BYTES = 1 << 20  # a description is a few KiB; refuse anything absurd
MAX_WEIGHT_BYTES = 2 << 30


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and the path."""


@dataclass(frozen=True)
class LoadedModel:
    """A network in eval mode with its description, as ``load_checkpoint`` read them. Treat as
    read-only (the app shares it). How it samples (folded, compiled, fused) is ``runtime``'s choice."""

    name: str
    path: Path  # the .json description
    network: nn.Module
    experiment: ExperimentConfig
    normalization: PixelNormalization
    description: dict[str, Any] = field(repr=False)

    @property
    def device(self) -> torch.device:
        return module_device(self.network)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self.experiment.network.image_size
        return (self.experiment.network.channels, s, s)


def _stem(path: str | os.PathLike) -> Path:
    """checkpoints/x, checkpoints/x.json or checkpoints/x.safetensors -> checkpoints/x."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.json"))
        found = [f for f in found if _looks_like_description(f)]
        if len(found) != 1:
            raise CheckpointError(f"{p} is a folder with {len(found)} checkpoint descriptions; name one file")
        return found[0].with_suffix("")
    if p.suffix in (".json", ".safetensors"):
        return p.with_suffix("")
    return p


def _looks_like_description(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_DESCRIPTION_BYTES:
            return False
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_checkpoint(stem: str | os.PathLike, state_dict: dict[str, torch.Tensor], description: dict[str, Any],
                    dtype: torch.dtype | None = None, shard_bytes: int | None = None) -> list[Path]:
    """Write ``stem.json`` and the weights (``dtype`` casts floating tensors, e.g. fp16 for
    shipping). ``shard_bytes`` splits the weights into files no larger than that. Returns paths."""
    stem = Path(stem)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
               for k, v in state_dict.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if shard_bytes and shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        names = [f"{stem.name}.safetensors"]
    else:
        names = [f"{stem.name}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        atomic_save_tensors(shard, stem.parent / name, {"format": FORMAT})
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()})
    description = dict(description, format=FORMAT, weights_files=names, weights_dtype=",".join(dtypes))
    write_json(stem.with_suffix(".json"), description)
    return [stem.with_suffix(".json")] + [stem.parent / n for n in names]


def read_description_file(jpath: Path) -> dict[str, Any]:
    """A JSON file in the description format (size, JSON and format checked; a file anyone may have
    handed over). Raises CheckpointError naming the file."""
    desc = read_json(jpath, MAX_DESCRIPTION_BYTES, CheckpointError, "a checkpoint description")
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise CheckpointError(f"{jpath} is not a diffusion-explorer checkpoint description (format {FORMAT!r} expected)")
    return desc


def read_description(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a checkpoint, validated enough to list it (no weights read)."""
    jpath = _stem(path).with_suffix(".json")
    if not jpath.is_file():
        raise CheckpointError(f"no checkpoint description at {jpath}")
    desc = read_description_file(jpath)
    files = desc.get("weights_files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise CheckpointError(f"{jpath} lists no weight files")
    for f in files:
        if Path(f).name != f or not f.endswith(".safetensors"):
            raise CheckpointError(f"{jpath} names a weight file outside its folder: {f!r}")
    return desc


def experiment_from_description(desc: dict[str, Any], where: str) -> ExperimentConfig:
    """The experiment a description states, every field within its bounds (``config.BOUNDS``) and
    its network within the size limits and the memory budget (``networks.over_budget``, measured
    without allocating), so that building it is safe. Raises CheckpointError naming ``where``."""
    try:
        if not isinstance(desc.get("experiment"), dict):
            raise ConfigError("no experiment table")
        experiment = ExperimentConfig.from_dict(desc["experiment"], "experiment")
    except (ConfigError, TypeError, ValueError, ArithmeticError) as e:
        raise CheckpointError(f"{where}: bad experiment description: {e}") from e
    limits = beyond_limits(experiment.network)
    if limits:
        raise CheckpointError(f"{where}: network size beyond this tool's limits {limits}")
    try:
        too_costly = over_budget(experiment.network)
    except Exception as e:  # noqa: BLE001 - a network of this kind that cannot run its own config
        raise CheckpointError(f"{where}: the described network cannot run ({type(e).__name__}: {str(e)[:200]})") from e
    if too_costly:
        raise CheckpointError(f"{where}: {too_costly}")
    return experiment


def normalization_from_description(desc: dict[str, Any], where: str) -> PixelNormalization:
    """The pixel normalisation a description states (three finite means, three finite positive
    standard deviations). Raises CheckpointError naming ``where``."""
    try:
        table = desc.get("normalization", {})
        if not isinstance(table, dict):
            raise ValueError("must be a table of mean and std")
        return PixelNormalization(**table)
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{where}: bad normalization: {e}") from e


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Rebuild the network a checkpoint describes and load its weights (eval mode, no grads). A
    diffusers pipeline folder (``diffusers_import``) opens here too."""
    diffusers_model = _load_diffusers(path, device, dtype)
    if diffusers_model is not None:
        return diffusers_model
    stem = _stem(path)
    desc = read_description(stem)
    where = str(stem.with_suffix(".json"))
    experiment = experiment_from_description(desc, where)
    normalization = normalization_from_description(desc, where)
    network = build_network(experiment.network)
    expected = network.state_dict()
    weights: dict[str, torch.Tensor] = {}
    files: dict[str, Path] = {}  # tensor -> the file holding it
    for name in desc["weights_files"]:
        wpath = stem.parent / name
        if not wpath.is_file():
            raise CheckpointError(f"weight file {wpath} is missing")
        if wpath.stat().st_size > MAX_WEIGHT_BYTES:
            raise CheckpointError(f"weight file {wpath} is larger than {MAX_WEIGHT_BYTES >> 30} GiB")
        try:
            shard = load_file(str(wpath), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{wpath} is not a readable safetensors file: {e}") from e
        for k in shard:
            if k in files:
                raise CheckpointError(f"{wpath}: tensor {k} is also in {files[k]}")
            files[k] = wpath
        weights.update(shard)
    validate_tensors(weights, expected, where, against="the description", files=files, error=CheckpointError)
    network.load_state_dict({k: weights[k].to(v.dtype) for k, v in expected.items()})
    _prepare_for_sampling(network, device, dtype)
    return LoadedModel(stem.name, stem.with_suffix(".json"), network, experiment, normalization, desc)


def _prepare_for_sampling(network: nn.Module, device: str | torch.device, dtype: torch.dtype) -> None:
    network.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if torch.device(device).type == "cuda":  # in NCHW, bilinear upsampling took 68% of a sampling call (docs/performance.md)
        network.to(memory_format=torch.channels_last)


def _load_diffusers(path: str | os.PathLike, device: str | torch.device, dtype: torch.dtype) -> LoadedModel | None:
    """The diffusers pipeline folder at ``path`` as a LoadedModel (its ``path`` is the folder), or
    None if ``path`` is no such folder."""
    from .diffusers_import import DiffusersError, find_pipeline, load_network, read_pipeline

    try:
        folder = find_pipeline(path)
        if folder is None:
            return None
        desc = read_pipeline(folder)
        experiment, network = load_network(folder, desc)
    except DiffusersError as e:
        raise CheckpointError(str(e)) from e
    except ImportError as e:  # diffusers not installed: say how to install it
        raise CheckpointError(f"{path}: {e}") from e
    _prepare_for_sampling(network, device, dtype)
    return LoadedModel(folder.name, folder.root, network, experiment, PixelNormalization(**desc["normalization"]), desc)


def convert_diffusers(folder: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Write a diffusers pipeline folder as this project's checkpoint (fp16 safetensors + JSON),
    e.g. to turn a ``.bin`` pickle into safetensors once. Returns the paths written."""
    model = _load_diffusers(folder, "cpu", torch.float32)
    if model is None:
        raise CheckpointError(f"{folder} is not a diffusers pipeline folder (no model_index.json, no UNet config.json)")
    desc = describe_model(model.experiment, model.normalization, model.network)
    desc.update(source=model.description["source"], diffusers=model.description["diffusers"],
                weights="float16, converted from diffusers")
    return save_checkpoint(dest, model.network.state_dict(), desc, dtype=torch.float16)


def shipping_description(path: str | os.PathLike) -> dict[str, Any]:
    """A run's description as a shipped checkpoint states it (weights: EMA in float16)."""
    desc = dict(read_description(path))
    desc.pop("weights_files", None)
    desc["weights"] = "EMA, float16"
    return desc


def export_checkpoint(run: str | os.PathLike, dest: str | os.PathLike, shard_bytes: int | None = None) -> list[Path]:
    """Write a training run's EMA model as a shippable checkpoint: fp16 safetensors + JSON."""
    model = load_checkpoint(run)
    return save_checkpoint(dest, model.network.state_dict(), shipping_description(run), dtype=torch.float16,
                           shard_bytes=shard_bytes)


def modify_description(path: str | os.PathLike, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Read the description, let ``change`` edit it in place, write it back; returns it. The read,
    the change and the (atomic) write happen under the description's file lock, so writers in
    other threads or processes (two evaluations of one checkpoint) never lose each other's
    changes: each reads what the previous one wrote."""
    stem = _stem(path)
    jpath = stem.with_suffix(".json")
    with file_lock(jpath):
        desc = read_description(stem)
        change(desc)
        write_json(jpath, desc)
    return desc


def update_description(path: str | os.PathLike, **entries: Any) -> dict[str, Any]:
    """Merge ``entries`` into the description (dicts are merged one level deep); atomic, and
    serialised with other writers (``modify_description``)."""
    def merge(desc: dict[str, Any]) -> None:
        for k, v in entries.items():
            if isinstance(v, dict) and isinstance(desc.get(k), dict):
                desc[k] = {**desc[k], **v}
            else:
                desc[k] = v

    return modify_description(path, merge)


def find_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Description files of every checkpoint directly inside ``folder`` (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("*.json")) if _looks_like_description(p)]


def describe_model(experiment: ExperimentConfig, normalization: PixelNormalization, network: nn.Module,
                   training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The description dictionary of a model (weights list and format are added on save)."""
    return {
        "name": experiment.name,
        "experiment": experiment.to_dict(),
        "normalization": {"mean": list(normalization.mean), "std": list(normalization.std)},
        "parameters": count_parameters(network),
        "training": training or {},
        "metrics": metrics or {},
    }
