"""The network kind "diffusers_unet2d": diffusers' ``UNet2DModel`` behind this project's network seam.

Our networks take ``(x_t [N x C x S x S], noise variance sigma_t^2 [N])``; a ``UNet2DModel`` takes
``(x_t, integer timestep t [N])`` of the discrete schedule it was trained on. ``TimestepNetwork``
is the one adapter between the two: it holds that schedule's abar_t table (float64) and gives the
UNet the trained step whose noise variance 1 - abar_t is nearest to the one asked for (the core's
samplers only ask for levels of the model's own grid, so the match is exact). A UNet that
predicts the clean image (diffusers' ``prediction_type = "sample"``) is turned into an eps
predictor here too, eps = (x_t - alpha_t x0) / sigma_t (Ho et al. 2020, eq. 4 solved for eps),
so the rest of the core sees eps or v only.

The UNet's own ``config.json`` travels inside the config as canonical JSON and is validated as
untrusted input (``validate_unet_config``): only keys of an unconditional pixel-space
``UNet2DModel`` are accepted, sizes are bounded, and every refusal names the field. diffusers is
imported only when a network is built, so the rest of the core works without it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import diffusion as D
from .schedules import ScheduleConfig, discrete_alphas_cumprod

KIND = "diffusers_unet2d"
INSTALL_HINT = "pip install 'diffusers>=0.30'"

# limits of an untrusted UNet2DModel config (the reference U-Net's, networks.UNET_LIMITS)
LIMITS = {"max_width": 2048, "max_levels": 7, "max_layers_per_block": 8, "max_image_size": 1024,
          "max_timesteps": 100_000}
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D")
# every other key of UNet2DModel's config, with what it may hold (None: JSON null allowed)
CHOICES: dict[str, tuple] = {
    "time_embedding_type": ("positional", "learned"),
    "mid_block_type": ("UNetMidBlock2D", None),
    "downsample_type": ("conv", "resnet"),
    "upsample_type": ("conv", "resnet"),
    "act_fn": ("silu", "swish", "mish", "gelu", "relu"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "class_embed_type": (None,),  # class-conditional models are refused
    "num_class_embeds": (None,),
}
BOOLS = ("center_input_sample", "flip_sin_to_cos", "add_attention")
NUMBERS = {"freq_shift": (0, 1e6), "dropout": (0.0, 1.0), "norm_eps": (1e-12, 1.0),
           "mid_block_scale_factor": (0.0, 1e6), "downsample_padding": (0, 8)}
SIZES = ("layers_per_block", "norm_num_groups", "attn_norm_num_groups", "attention_head_dim", "time_embedding_dim",
         "num_train_timesteps")  # positive integers (or null where diffusers allows it)
STRUCTURE = ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types")


def require_diffusers():
    """The diffusers package, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"diffusers models need the diffusers package: {INSTALL_HINT}") from e
    return diffusers


def _int(config: dict[str, Any], key: str, low: int, high: int, where: str, nullable: bool = False) -> int | None:
    v = config.get(key)
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise ValueError(f"{where}: {key} must be an integer from {low} to {high}, got {v!r}")
    return v


def validate_unet_config(config: Any, where: str = "unet config") -> dict[str, Any]:
    """The keys of an untrusted UNet2DModel ``config.json`` that build the network, checked:
    ValueError naming the field for an unknown class, a class-conditional or latent model, a
    non-square or absurd size, or a value diffusers would not honour. Keys starting with "_"
    (diffusers' bookkeeping) and keys that UNet2DModel does not know (diffusers ignores them too)
    are dropped. Returns the cleaned config."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} must be a JSON object")
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{where}: _class_name {cls!r} is not supported (only UNet2DModel, an unconditional "
                         "pixel-space U-Net)")
    out: dict[str, Any] = {}
    size = config.get("sample_size")
    if isinstance(size, list) and len(size) == 2:
        if size[0] != size[1]:
            raise ValueError(f"{where}: sample_size {size} is not square")
        size = size[0]
    out["sample_size"] = _int({"sample_size": size}, "sample_size", 1, LIMITS["max_image_size"], where)
    out["in_channels"] = _int(config, "in_channels", 3, 3, where) if "in_channels" in config else 3
    out["out_channels"] = _int(config, "out_channels", 3, 3, where) if "out_channels" in config else 3
    widths = config.get("block_out_channels", [224, 448, 672, 896])
    if (not isinstance(widths, list) or not 1 <= len(widths) <= LIMITS["max_levels"]
            or not all(type(w) is int and 1 <= w <= LIMITS["max_width"] for w in widths)):
        raise ValueError(f"{where}: block_out_channels must be 1 to {LIMITS['max_levels']} integers from 1 to "
                         f"{LIMITS['max_width']}, got {str(widths)[:80]}")
    out["block_out_channels"] = widths
    for key, allowed, default in (("down_block_types", DOWN_BLOCKS, ["DownBlock2D"] * len(widths)),
                                  ("up_block_types", UP_BLOCKS, ["UpBlock2D"] * len(widths))):
        blocks = config.get(key, default)
        if not isinstance(blocks, list) or len(blocks) != len(widths):
            raise ValueError(f"{where}: {key} must list one block per block_out_channels entry ({len(widths)})")
        for b in blocks:
            if b not in allowed:
                raise ValueError(f"{where}: {key} holds {b!r:.60}; supported: {', '.join(allowed)}")
        out[key] = blocks
    if config.get("layers_per_block", 2) is not None:
        out["layers_per_block"] = _int({"layers_per_block": config.get("layers_per_block", 2)}, "layers_per_block",
                                       1, LIMITS["max_layers_per_block"], where)
    for key in SIZES[1:]:
        if key in config:
            high = LIMITS["max_timesteps"] if key == "num_train_timesteps" else 4 * LIMITS["max_width"]
            out[key] = _int(config, key, 1, high, where, nullable=True)
    for key, allowed in CHOICES.items():
        if key in config:
            if config[key] not in allowed:
                what = "class-conditional models are not supported" if key in ("class_embed_type", "num_class_embeds") \
                    else f"supported: {', '.join(str(a) for a in allowed)}"
                raise ValueError(f"{where}: {key} {config[key]!r:.60} cannot be honoured ({what})")
            out[key] = config[key]
    if out.get("time_embedding_type") == "learned" and not out.get("num_train_timesteps"):
        raise ValueError(f"{where}: time_embedding_type 'learned' needs num_train_timesteps")
    for key in BOOLS:
        if key in config:
            if not isinstance(config[key], bool):
                raise ValueError(f"{where}: {key} must be true or false, got {config[key]!r:.60}")
            out[key] = config[key]
    for key, (low, high) in NUMBERS.items():
        if key in config:
            v = config[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                raise ValueError(f"{where}: {key} must be a number from {low} to {high}, got {v!r:.60}")
            out[key] = v
    groups = out.get("norm_num_groups", 32)
    if groups and any(w % groups for w in widths):
        raise ValueError(f"{where}: norm_num_groups {groups} does not divide block_out_channels {widths}")
    return out


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """The ``[network]`` table of a diffusers UNet2DModel (kind "diffusers_unet2d")."""

    kind: str = KIND
    image_size: int = 32  # the UNet's sample_size
    channels: int = 3
    unet_config: str = "{}"  # the UNet2DModel's config.json, validated, as canonical JSON
    # the discrete schedule whose integer steps the UNet was trained on (the scheduler config's):
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # a schedules.ScheduleConfig kind: linear, scaled_linear, cosine or trained_betas
    beta_start: float = 1e-4
    beta_end: float = 0.02
    trained_betas: tuple[float, ...] = ()  # beta_schedule "trained_betas" only: beta_t for t = 0..T-1
    predicts_x0: bool = False  # prediction_type "sample": the adapter turns the UNet's x0 into eps

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ValueError(f"network.kind must be {KIND!r}, got {self.kind!r}")
        try:
            unet = json.loads(self.unet_config)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"network.unet_config is not JSON: {str(e)[:100]}") from e
        unet = validate_unet_config(unet, "network.unet_config")
        object.__setattr__(self, "unet_config", json.dumps(unet, sort_keys=True))
        if self.image_size != unet["sample_size"] or self.channels != unet["in_channels"]:
            raise ValueError("network.image_size and network.channels must be the unet_config's sample_size and "
                             f"in_channels ({unet['sample_size']}, {unet['in_channels']})")
        if isinstance(self.trained_betas, list):  # as read from JSON
            object.__setattr__(self, "trained_betas", tuple(self.trained_betas))
        self.schedule()  # checks the schedule fields

    def schedule(self) -> ScheduleConfig:
        """The training schedule the UNet's integer timesteps index."""
        steps = self.num_train_timesteps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= LIMITS["max_timesteps"]:
            raise ValueError(f"network.num_train_timesteps must be an integer from 1 to {LIMITS['max_timesteps']}")
        if self.beta_schedule not in ("linear", "scaled_linear", "cosine", "trained_betas"):
            raise ValueError("network.beta_schedule must be linear, scaled_linear, cosine or trained_betas, "
                             f"got {self.beta_schedule!r}")
        betas = {"beta_start": self.beta_start, "beta_end": self.beta_end} \
            if self.beta_schedule in ("linear", "scaled_linear") else {}
        try:
            return ScheduleConfig(kind=self.beta_schedule, num_timesteps=self.num_train_timesteps,
                                  trained_betas=self.trained_betas, **betas)
        except ValueError as e:
            raise ValueError(f"network.{e}") from e

    def gflops_per_image(self) -> float:
        """GFLOPs of one UNet evaluation on one image, counted by ``torch.utils.flop_counter`` on
        the meta device (no memory, no weights; convolutions, matmuls and attention)."""
        return _counted_gflops(self.unet_config, self.image_size, self.channels)


@functools.lru_cache(maxsize=32)
def _counted_gflops(unet_config: str, size: int, channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    diffusers = require_diffusers()
    with torch.device("meta"), torch.no_grad():
        unet = diffusers.UNet2DModel.from_config(json.loads(unet_config))
        with FlopCounterMode(display=False) as counter:
            unet(torch.empty(1, channels, size, size), torch.tensor([0]))
    return counter.get_total_flops() / 1e9


class TimestepNetwork(nn.Module):
    """``(x_t [N x C x S x S], noise variance [N]) -> eps or v [N x C x S x S]`` around a UNet2DModel
    (module ``unet``), which sees the integer step of its training schedule nearest in noise
    variance. The abar table is kept in float64, apart from the module's parameters and buffers:
    casting the network to float16 must not merge neighbouring steps."""

    def __init__(self, config: DiffusersUNetConfig):
        super().__init__()
        diffusers = require_diffusers()
        self.config = config
        self.unet = diffusers.UNet2DModel.from_config(json.loads(config.unet_config))
        self.alphas_cumprod = discrete_alphas_cumprod(config.schedule())  # abar_t, float64 [T]
        self._abar: dict[torch.device, torch.Tensor] = {}  # the table on each device it ran on

    def abar_on(self, device: torch.device) -> torch.Tensor:
        """abar_t as a float64 tensor [T] on ``device`` (copied there once)."""
        if device not in self._abar:
            self._abar[device] = torch.from_numpy(self.alphas_cumprod).to(device)
        return self._abar[device]

    def timesteps(self, variance: torch.Tensor) -> torch.Tensor:
        """Integer steps [N] whose noise variance 1 - abar_t is nearest to ``variance`` [N], found on
        the variance's device (no copy to the host per call; MPS has no float64: on the CPU there)."""
        device = variance.device if variance.device.type != "mps" else torch.device("cpu")
        v = variance.detach().to(device, torch.float64)
        return ((1.0 - self.abar_on(device))[None, :] - v[:, None]).abs().argmin(dim=1)

    def forward(self, x_t: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        from torch._subclasses.fake_tensor import is_fake

        # shapes only (networks.network_cost, on fake or meta tensors): no size depends on the step
        shapes_only = variance.device.type == "meta" or is_fake(variance)
        t = torch.zeros(len(variance), dtype=torch.int64) if shapes_only else self.timesteps(variance)
        out = self.unet(x_t, t.to(x_t.device), return_dict=False)[0]
        if not self.config.predicts_x0 or shapes_only:
            return out
        abar = self.abar_on(t.device)[t].to(x_t.device, torch.float32).view(-1, 1, 1, 1)
        return D.eps_from_x0(x_t, out.float(), abar.sqrt(), (1.0 - abar).sqrt())  # eq. 4 solved for eps


def beyond_limits(config: DiffusersUNetConfig) -> str | None:
    """None: a config's sizes are checked when it is made (``validate_unet_config`` refuses one
    beyond ``LIMITS``, naming the field)."""
    return None
