"""Experiment configuration: frozen dataclasses, loaded from TOML files in ``experiments/``.

An experiment file has the tables ``[experiment]``, ``[schedule]``, ``[network]``, ``[data]`` and
``[train]``; every key is checked, so a typo is an error rather than a silently ignored setting.
``[network]``'s keys are those of its ``kind`` (``diffusion_core.networks``; default "unet").
The same dataclasses are written as JSON into every checkpoint (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from . import networks
from .schedules import ScheduleConfig
from .unet import UNetConfig

Augment = Literal["none", "flip", "flip_x2"]
Loss = Literal["l1", "l2"]
Normalization = Literal["dataset", "minus_one_one"]


class ConfigError(ValueError):
    """A configuration file or dictionary that cannot be used, with the reason."""


class Bound(NamedTuple):
    """The values a config number may take (inclusive; ``lo_open``: greater than ``lo``), and for a
    tuple field the number of entries it may hold."""

    lo: float
    hi: float
    lo_open: bool = False
    count: tuple[int, int] | None = None


MAX_INT = 2**63 - 1  # any integer field without a bound of its own stays within int64
MAX_TEXT = 10_000  # characters of a text field (name, description)

# Bounds of every number a description read from disk may hold, checked (with the field's name and
# the bound in the message) before a dataclass is built from it. A field not named here is still
# checked for its type: an integer (not a bool, not a float), a finite number, a text.
BOUNDS: dict[type, dict[str, Bound]] = {
    UNetConfig: {
        "widths": Bound(1, 2048, count=(2, 7)),
        "block_depth": Bound(1, 8),
        "image_size": Bound(4, 1024),
        "attention_resolutions": Bound(1, 1024, count=(0, 7)),
        "attention_heads": Bound(1, 64),
        "embedding_dims": Bound(2, 4096),
        "embedding_min_frequency": Bound(0, 1e6, lo_open=True),
        "embedding_max_frequency": Bound(0, 1e6, lo_open=True),
        "channels": Bound(1, 4),
        "batchnorm_momentum": Bound(0, 1),
    },
    ScheduleConfig: {
        "num_timesteps": Bound(1, 100_000),
        "beta_start": Bound(0, 1, lo_open=True),
        "beta_end": Bound(0, 1, lo_open=True),
        "cosine_s": Bound(0, 1),
        "max_signal_rate": Bound(0, 1, lo_open=True),
        "min_signal_rate": Bound(0, 1, lo_open=True),
    },
}


@dataclass(frozen=True)
class DataConfig:
    samples: int | None = None  # training images drawn (seeded) from the source; None = all
    augment: Augment = "none"  # "flip": random horizontal flips; "flip_x2": each epoch shows every
    #                            image once plain and once mirrored (the seed table's "x2 aug.")
    normalization: Normalization = "dataset"  # per-channel mean/std of the training set, or [-1, 1]
    name: str = "bedrooms"  # data-set the experiment was designed for

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"data.samples must be positive, got {self.samples}")
        if self.augment not in ("none", "flip", "flip_x2"):
            raise ConfigError(f"data.augment must be none, flip or flip_x2, got {self.augment!r}")
        if self.normalization not in ("dataset", "minus_one_one"):
            raise ConfigError(f"data.normalization must be dataset or minus_one_one, got {self.normalization!r}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    loss: Loss = "l1"  # l1: mean absolute error on the noise (Keras DDIM); l2: MSE (DDPM)
    prediction: Literal["eps", "v"] = "eps"  # what the network predicts
    ema_decay: float = 0.999
    # EMA decay at step t is min(ema_decay, (1 + t) / (10 + t)) (the num_updates rule of TF's
    # ExponentialMovingAverage): without it a short run's EMA keeps ema_decay**steps of the random
    # initialisation (8% after ddim_01's 2,500 steps), which ruined its samples on the GPU
    ema_warmup: bool = True
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    warmup_steps: int = 0  # linear learning-rate warm-up
    seed: int = 0
    sample_every: int = 10  # epochs between sample grids (0: never)
    checkpoint_every: int = 10  # epochs between checkpoints (0: only at the end)
    sample_steps: int = 20  # DDIM steps of the sample grid

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be positive")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"train.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.weight_decay < 0 or not 0 <= self.ema_decay < 1:
            raise ConfigError("train.weight_decay must be >= 0 and train.ema_decay in [0, 1)")
        if self.loss not in ("l1", "l2") or self.prediction not in ("eps", "v"):
            raise ConfigError("train.loss must be l1 or l2 and train.prediction eps or v")


BOUNDS[DataConfig] = {"samples": Bound(1, 10**9)}
BOUNDS[TrainConfig] = {
    "epochs": Bound(1, 10**6),
    "batch_size": Bound(1, 65_536),
    "learning_rate": Bound(0, 1, lo_open=True),
    "weight_decay": Bound(0, 10),
    "ema_decay": Bound(0, 1),
    "grad_clip": Bound(0, 1e6),
    "warmup_steps": Bound(0, 10**9),
    "seed": Bound(0, MAX_INT),
    "sample_every": Bound(0, 10**6),
    "checkpoint_every": Bound(0, 10**6),
    "sample_steps": Bound(1, 10_000),
}


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    family: Literal["ddpm", "ddim"] = "ddim"  # the seed table the row belongs to
    description: str = ""
    reported_fid: float | None = None  # the seed's FID (non-standard protocol, see README)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    network: UNetConfig = field(default_factory=UNetConfig)  # a config of networks.KINDS, by network.kind
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ExperimentConfig":
        d = dict(d)
        sections = {"schedule": ScheduleConfig, "data": DataConfig, "train": TrainConfig}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "network":  # the dataclass of the table's network.kind
                where = f"{source}: [network]"
                kwargs[key] = _build(_network_config_class(value, where), value, where)
            elif key in sections:
                kwargs[key] = _build(sections[key], value, f"{source}: [{key}]")
            elif key == "experiment":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: [experiment] must be a table")
                kwargs.update(value)
            else:
                kwargs[key] = value
        return _build(cls, kwargs, source)

    def with_overrides(self, **sections: dict[str, Any]) -> "ExperimentConfig":
        """A copy with some fields of sections replaced, e.g. ``train={"epochs": 5}``."""
        d = self.to_dict()
        for section, values in sections.items():
            if not values:
                continue
            if section not in d or not isinstance(d[section], dict):
                raise ConfigError(f"no config section {section!r}")
            d[section].update(values)
        return ExperimentConfig.from_dict(d, "overrides")


def _network_config_class(table: Any, where: str) -> type:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of keys")
    try:
        return networks.config_class(table)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of keys")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    check_fields(cls, values, where)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ConfigError(f"{where}: {e}") from e


def check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """Raise ConfigError, naming the field and what it may hold, unless every value in ``values`` has
    its field's type in ``cls`` and lies within ``BOUNDS[cls]``: what makes a description from any
    file safe to build a dataclass (and then a network) from."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a config class whose annotations do not resolve: checked by itself
        return
    bounds = BOUNDS.get(cls, {})
    for key, value in values.items():
        if key in hints:
            _check_value(f"{where} {key}" if where.endswith("]") else f"{where}: {key}", hints[key], value,
                         bounds.get(key))


def _check_value(name: str, hint: Any, value: Any, bound: Bound | None) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint) or hint is Any:
        return
    if type(None) in args:  # X | None
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if not isinstance(value, (str, int, float)) or value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}, got {_shown(value)}")
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {_shown(value)}")
        if bound is not None and bound.count is not None and not bound.count[0] <= len(value) <= bound.count[1]:
            raise ConfigError(f"{name} must hold {bound.count[0]} to {bound.count[1]} entries, got {len(value)}")
        for i, item in enumerate(value):
            _check_value(f"{name}[{i}]", args[0], item, bound)
    elif hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {_shown(value)}")
    elif hint is int:
        lo, hi = (bound.lo, bound.hi) if bound else (-MAX_INT - 1, MAX_INT)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {_shown(value)}")
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and bound is not None:
            ok = (bound.lo < value if bound.lo_open else bound.lo <= value) and value <= bound.hi
        if not ok:
            within = (f" {'above' if bound.lo_open else 'from'} {bound.lo:g} {'and at most' if bound.lo_open else 'to'}"
                      f" {bound.hi:g}") if bound else ""
            raise ConfigError(f"{name} must be a finite number{within}, got {_shown(value)}")
    elif hint is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ConfigError(f"{name} must be a text of at most {MAX_TEXT} characters, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value for a message, cut short (a 5,000-digit number or a long list stays readable)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = repr(value)
    except ValueError:  # holds an integer too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read an experiment TOML file; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    raw.setdefault("experiment", {}).setdefault("name", path.stem)
    return ExperimentConfig.from_dict(raw, str(path))
