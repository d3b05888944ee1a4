"""Which network a model is: one registry from the config's ``network.kind`` to the network.

Every kind has a frozen config dataclass (the experiment file's ``[network]`` table, saved in
every checkpoint's description) with at least ``kind``, ``image_size`` and ``channels``, and a
builder from that config to a freshly initialised ``nn.Module`` taking ``(x_t [N x C x S x S],
noise variance [N])`` to a prediction [N x C x S x S]. ``build_network`` is the one way to make a
network: training, checkpoint loading and the app's checks all build through it.

A new kind of network is its module and one entry in ``KINDS``. How a network samples fast
(BatchNorm folding, the fused Triton kernels) is ``runtime``'s business: a kind it does not know
samples eagerly or through torch.compile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from . import diffusers_unet
from .unet import UNet, UNetConfig

DEFAULT_KIND = "unet"  # what a [network] table (or a description) without ``kind`` means

# the reference U-Net's limits for a description read from disk: anything larger is refused
UNET_LIMITS = {"max_width": 2048, "max_levels": 7, "max_depth": 8, "max_image_size": 1024}


def _unet_beyond_limits(config: UNetConfig) -> str | None:
    if (max(config.widths) > UNET_LIMITS["max_width"] or len(config.widths) > UNET_LIMITS["max_levels"]
            or config.block_depth > UNET_LIMITS["max_depth"] or config.image_size > UNET_LIMITS["max_image_size"]):
        return str(UNET_LIMITS)
    return None


@dataclass(frozen=True)
class NetworkKind:
    """One kind of network: its config, its builder, and the size limits of an untrusted config."""

    config: type  # frozen dataclass of the [network] table; its ``kind`` field defaults to the kind's name
    build: Callable[[Any], nn.Module]  # config -> a freshly initialised network in train mode
    beyond_limits: Callable[[Any], str | None]  # config -> the limits it exceeds, or None


KINDS: dict[str, NetworkKind] = {
    "unet": NetworkKind(UNetConfig, UNet, _unet_beyond_limits),  # the reference design (unet.py)
    # diffusers' UNet2DModel of a pipeline folder (diffusers_import.py), behind its timestep adapter
    diffusers_unet.KIND: NetworkKind(diffusers_unet.DiffusersUNetConfig, diffusers_unet.TimestepNetwork,
                                     diffusers_unet.beyond_limits),
}


def network_kind(kind: Any) -> NetworkKind:
    """The registry entry of ``kind``; ValueError naming the field and the known kinds otherwise."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"network.kind must be one of {', '.join(sorted(KINDS))}, got {kind!r}")
    return KINDS[kind]


def config_class(network_table: dict[str, Any]) -> type:
    """The config dataclass that a ``[network]`` table describes (by its ``kind``, default "unet")."""
    return network_kind(network_table.get("kind", DEFAULT_KIND)).config


def build_network(config: Any) -> nn.Module:
    """A freshly initialised network of ``config``'s kind (train mode, float32, on the current
    default device: ``with torch.device("meta")`` builds one without memory)."""
    return network_kind(getattr(config, "kind", None)).build(config)


def beyond_limits(config: Any) -> str | None:
    """The limits ``config`` exceeds (a description is untrusted input), or None."""
    return network_kind(getattr(config, "kind", None)).beyond_limits(config)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (frozen ones too: an EMA or loaded network has no gradients)."""
    return sum(p.numel() for p in module.parameters())
