"""Checkpoints from the ecosystem: diffusers pipeline folders of an unconditional ``UNet2DModel``
(``DDPMPipeline`` / ``DDIMPipeline``, as ``save_pretrained`` writes them or the Hugging Face hub
serves them), read offline into a description and a network; ``checkpoint.load_checkpoint`` makes
them the ``LoadedModel`` that every sampler, page and command uses, wherever a checkpoint is named.

Layouts found (``find_pipeline``)::

    FOLDER/model_index.json, unet/config.json + weights, scheduler/scheduler_config.json
    FOLDER/config.json (a bare UNet2DModel) + weights, scheduler_config.json beside it
    models--ORG--NAME/snapshots/HASH/...   a hub cache entry (refs/main picks the snapshot)

Everything read is untrusted: the JSON files are size-checked and every value that matters is
validated (refusals name the file and the field); weights come from safetensors, or from a
``.bin`` only through PyTorch's restricted unpickler (``torch.load(weights_only=True)``), which
builds tensors and runs no code. The scheduler config maps onto this project's discrete schedule
(``scheduler_settings``): ``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2 or
``trained_betas``, ``num_train_timesteps``, ``timestep_spacing`` + ``steps_offset``,
``prediction_type``, ``set_alpha_to_one``, and DDIM steps of t - floor(T / S) as DDIMScheduler
takes them; ``variance_type`` fixed_small / fixed_large becomes the DDPM sampler's
``ddpm_variance``. What the core cannot honour (``thresholding``, another ``variance_type``,
``rescale_betas_zero_snr``, a ``clip_sample_range`` other than 1) is refused with the field's name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import ConfigError, DataConfig, ExperimentConfig, TrainConfig
from .diffusers_unet import DiffusersUNetConfig, validate_unet_config
from . import files
from .files import validate_tensors
from .networks import build_network, count_parameters
from .schedules import ScheduleConfig

SOURCE = "diffusers"  # a LoadedModel's description["source"] for a folder opened here
PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.bin")  # in order of preference
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "sample"}
# variance_type -> samplers.SamplerConfig.ddpm_variance (fixed_small_log: the same variance, taken as a log)
VARIANCES = {"fixed_small": "posterior", "fixed_small_log": "posterior", "fixed_large": "beta"}
# attention weights of diffusers before 0.15, renamed as diffusers' from_pretrained renames them
OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
_HASH = re.compile(r"^[0-9a-f]{6,64}$")
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB
MAX_WEIGHT_BYTES = 2 << 30  # as for this project's checkpoints


class DiffusersError(ValueError):
    """A diffusers folder that cannot be used, naming the file (and the field). ``checkpoint``
    turns it into a CheckpointError."""


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a pipeline's parts are."""

    root: Path  # the folder named (a hub cache entry: its snapshot)
    name: str  # "ORG/NAME" for a hub cache entry, else the folder's name
    unet: Path  # folder of the UNet's config.json and weights
    scheduler: Path  # scheduler_config.json (may be missing: refused when read)
    model_index: Path | None  # model_index.json of a pipeline; None for a bare UNet folder


def _hub_snapshot(path: Path) -> tuple[Path, str | None]:
    """A hub cache entry ``models--ORG--NAME`` -> its snapshot (refs/main, else the only one) and
    "ORG/NAME"; any other folder as it is."""
    if not path.name.startswith("models--") or not (path / "snapshots").is_dir():
        return path, None
    name = "/".join(path.name.split("--")[1:])
    ref = path / "refs" / "main"
    if ref.is_file() and ref.stat().st_size < 100:
        commit = ref.read_text(encoding="utf-8", errors="replace").strip()
        if _HASH.match(commit) and (path / "snapshots" / commit).is_dir():
            return path / "snapshots" / commit, name
    snaps = sorted(p for p in (path / "snapshots").iterdir() if p.is_dir())
    if len(snaps) != 1:
        raise DiffusersError(f"{path} holds {len(snaps)} snapshots and no refs/main: "
                             "name one of its snapshots/ folders")
    return snaps[0], name


def find_pipeline(path: str | os.PathLike) -> DiffusersFolder | None:
    """The diffusers layout at ``path`` (see the module's docstring), or None if it is none."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    p, hub_name = _hub_snapshot(p)
    if hub_name is None and p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        hub_name = "/".join(p.parent.parent.name.split("--")[1:])
    name = hub_name or p.name
    if (p / "model_index.json").is_file():
        return DiffusersFolder(p, name, p / "unet", p / "scheduler" / "scheduler_config.json", p / "model_index.json")
    if (p / "config.json").is_file() and any((p / w).is_file() for w in WEIGHT_FILES):
        beside = p / "scheduler_config.json"
        sibling = p.parent / "scheduler" / "scheduler_config.json"
        return DiffusersFolder(p, name, p, beside if beside.is_file() or not sibling.is_file() else sibling, None)
    return None


def read_json(path: Path) -> dict[str, Any]:
    """An untrusted JSON object (size and syntax checked). DiffusersError naming the file."""
    if not path.is_file():
        raise DiffusersError(f"{path} is missing")
    value = files.read_json(path, MAX_CONFIG_BYTES, DiffusersError, "a diffusers config")
    if not isinstance(value, dict):
        raise DiffusersError(f"{path} must hold a JSON object")
    return value


def _choice(config: dict, key: str, allowed, default, where: Path):
    value = config.get(key, default)
    if value is None:
        value = default
    if value not in allowed:
        raise DiffusersError(f"{where}: {key} {value!r:.60} cannot be honoured (supported: "
                              f"{', '.join(str(a) for a in allowed)})")
    return value


def scheduler_settings(config: dict[str, Any], where: Path) -> tuple[ScheduleConfig, str, bool, str]:
    """A DDPMScheduler / DDIMScheduler config -> (this project's schedule, prediction "eps" / "v" /
    "sample", clip_sample, the DDPM sampler's ddpm_variance). DiffusersError naming the field for
    anything the core cannot honour."""
    cls = config.get("_class_name")
    if cls not in SCHEDULERS:
        raise DiffusersError(f"{where}: _class_name {cls!r:.60} is not supported (only {', '.join(SCHEDULERS)})")
    refused = {"thresholding": False, "rescale_betas_zero_snr": False}
    for key, ok in refused.items():
        if config.get(key) is not None and config.get(key) is not ok:
            raise DiffusersError(f"{where}: {key} {config[key]!r:.60} cannot be honoured (only {ok!r})")
    variance = VARIANCES[_choice(config, "variance_type", tuple(VARIANCES), "fixed_small", where)]
    alpha_to_one = _choice(config, "set_alpha_to_one", (True, False), True, where)
    beta_schedule = _choice(config, "beta_schedule", tuple(BETA_SCHEDULES), "linear", where)
    prediction = _choice(config, "prediction_type", tuple(PREDICTIONS), "epsilon", where)
    spacing = _choice(config, "timestep_spacing", ("leading", "trailing", "linspace"), "leading", where)
    clip = _choice(config, "clip_sample", (True, False), True, where)
    if clip and config.get("clip_sample_range", 1.0) != 1.0:
        raise DiffusersError(f"{where}: clip_sample_range {config['clip_sample_range']!r} cannot be honoured "
                              "(only 1.0: the images' range [-1, 1])")
    steps = config.get("num_train_timesteps", 1000)
    offset = config.get("steps_offset", 0) if spacing == "leading" else 0  # diffusers uses it for leading only
    kind = BETA_SCHEDULES[beta_schedule]
    betas = {} if kind == "cosine" else {"beta_start": config.get("beta_start", 1e-4),
                                         "beta_end": config.get("beta_end", 0.02)}
    trained = config.get("trained_betas")
    if trained is not None:  # diffusers then ignores beta_schedule, beta_start and beta_end
        if not isinstance(trained, list):
            raise DiffusersError(f"{where}: trained_betas must be a list of numbers, got {trained!r:.60}")
        kind, betas = "trained_betas", {}
    for key, value in dict(betas, num_train_timesteps=steps, steps_offset=offset).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DiffusersError(f"{where}: {key} must be a number, got {value!r:.60}")
    if not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise DiffusersError(f"{where}: num_train_timesteps must be an integer from 1 to 100000, got {steps!r}")
    try:
        schedule = ScheduleConfig(kind=kind, num_timesteps=steps, spacing=spacing, steps_offset=offset,
                                  trained_betas=tuple(trained or ()), ddim_target="stride",
                                  set_alpha_to_one=alpha_to_one, **betas)
    except ValueError as e:
        raise DiffusersError(f"{where}: {e}") from e
    return schedule, PREDICTIONS[prediction], clip, variance


def read_pipeline(folder: DiffusersFolder) -> dict[str, Any]:
    """The description (this project's format, no weights) of a diffusers folder: experiment,
    normalisation ([-1, 1]) and what came from where. Reads only the JSON files."""
    pipeline = "UNet2DModel"
    if folder.model_index is not None:
        index = read_json(folder.model_index)
        pipeline = index.get("_class_name")
        if pipeline not in PIPELINES:
            raise DiffusersError(f"{folder.model_index}: _class_name {pipeline!r:.60} is not supported (only "
                                  f"{', '.join(PIPELINES)}: unconditional pixel-space models)")
        unet_entry = index.get("unet")
        if not (isinstance(unet_entry, list) and len(unet_entry) == 2 and unet_entry[1] == "UNet2DModel"):
            raise DiffusersError(f"{folder.model_index}: unet {str(unet_entry)[:80]} is not supported (only a "
                                  "diffusers UNet2DModel)")
    unet_json = folder.unet / "config.json"
    try:
        unet = validate_unet_config(read_json(unet_json), str(unet_json))
    except ValueError as e:
        raise DiffusersError(str(e)) from e
    schedule, prediction, clip, variance = scheduler_settings(read_json(folder.scheduler), folder.scheduler)
    network = DiffusersUNetConfig(
        image_size=unet["sample_size"], channels=unet["in_channels"], unet_config=json.dumps(unet, sort_keys=True),
        num_train_timesteps=schedule.num_timesteps, beta_schedule=schedule.kind, beta_start=schedule.beta_start,
        beta_end=schedule.beta_end, trained_betas=schedule.trained_betas, predicts_x0=prediction == "sample")
    scheduler_class = read_json(folder.scheduler)["_class_name"]
    weights = weight_file(folder)
    about = f"diffusers {pipeline} ({scheduler_class})"
    if weights.suffix == ".bin":  # said in the app's table: the pickle is read, restricted, on every load
        about += "; weights from a .bin pickle, read by PyTorch's restricted loader (convert makes safetensors)"
    try:
        experiment = ExperimentConfig(
            name=folder.name, family="ddim" if scheduler_class == "DDIMScheduler" else "ddpm",
            description=about, schedule=schedule, network=network,
            data=DataConfig(normalization="minus_one_one", name="not recorded (diffusers)"),
            train=TrainConfig(prediction="v" if prediction == "v" else "eps"))
    except (ConfigError, ValueError) as e:
        raise DiffusersError(f"{folder.root}: {e}") from e
    return {
        "name": folder.name,
        "source": SOURCE,
        "experiment": experiment.to_dict(),
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "diffusers": {"folder": str(folder.root), "pipeline": pipeline, "scheduler": scheduler_class,
                      "prediction_type": prediction, "clip_sample": clip, "ddpm_variance": variance,
                      "weights_file": weights.name},
        "training": {}, "metrics": {},
    }


def ddpm_variance(description: dict[str, Any]) -> str:
    """The DDPM step variance a model's own scheduler takes (``SamplerConfig.ddpm_variance``): a
    diffusers folder's (or its conversion's) variance_type, "posterior" for every other checkpoint."""
    value = (description.get("diffusers") or {}).get("ddpm_variance", "posterior")
    return value if value in ("posterior", "beta") else "posterior"


def weight_file(folder: DiffusersFolder) -> Path:
    """The UNet's weight file: safetensors first, the ``.bin`` pickle last. Sharded weights are refused."""
    for name in WEIGHT_FILES:
        if (folder.unet / name).is_file():
            return folder.unet / name
    if any(folder.unet.glob("*.index.json")):
        raise DiffusersError(f"{folder.unet}: sharded weights are not supported; save the UNet in one file")
    raise DiffusersError(f"{folder.unet}: no weight file ({', '.join(WEIGHT_FILES)})")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a ``.bin`` through ``torch.load(weights_only=True)``:
    its restricted unpickler rebuilds tensors and containers only and refuses any other object, so
    a crafted pickle raises instead of running code. DiffusersError naming the file."""
    if path.stat().st_size > MAX_WEIGHT_BYTES:
        raise DiffusersError(f"weight file {path} is larger than {MAX_WEIGHT_BYTES >> 30} GiB")
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path), device="cpu")
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as e:
        raise DiffusersError(f"{path} is not a readable weight file: {str(e)[:300]}") from e
    except Exception as e:  # noqa: BLE001 - pickle.UnpicklingError and whatever a crafted file makes it raise
        raise DiffusersError(f"{path} was refused by the restricted loader (it holds more than tensors): "
                              f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise DiffusersError(f"{path} does not hold a flat mapping of names to tensors")
    return tensors


def current_name(key: str, expected: set[str]) -> str:
    """A weight name as diffusers now spells it (attention weights were renamed in diffusers 0.15)."""
    if key in expected:
        return key
    for old, new in OLD_ATTENTION.items():
        key = key.replace(old, new)
    return key


def load_network(folder: DiffusersFolder, desc: dict[str, Any]) -> tuple[ExperimentConfig, torch.nn.Module]:
    """The experiment and the ``TimestepNetwork`` (float32, on the CPU, weights loaded) that
    ``desc`` (``read_pipeline``'s) describes. DiffusersError naming the file; ImportError without diffusers."""
    experiment = ExperimentConfig.from_dict(desc["experiment"], str(folder.root))
    wpath = weight_file(folder)
    try:
        network = build_network(experiment.network)
    except ImportError:
        raise
    except (ValueError, TypeError, RuntimeError) as e:  # diffusers refusing a config we let through
        raise DiffusersError(f"{folder.unet / 'config.json'}: diffusers cannot build this UNet2DModel: {e}") from e
    expected = network.unet.state_dict()  # the names in the file
    weights = {current_name(k, set(expected)): v for k, v in read_weights(wpath).items()}
    validate_tensors(weights, expected, str(wpath), against=str(folder.unet / "config.json"), error=DiffusersError)
    network.unet.load_state_dict({k: weights[k].to(v.dtype) for k, v in expected.items()})
    desc["parameters"] = count_parameters(network)
    return experiment, network
