"""Which network a model is: one registry from the config's ``network.kind`` to the network.

Every kind has a frozen config dataclass (the experiment file's ``[network]`` table, saved in
every checkpoint's description) with at least ``kind``, ``image_size`` and ``channels``, and a
builder from that config to a freshly initialised ``nn.Module`` taking ``(x_t [N x C x S x S],
noise variance [N])`` to a prediction [N x C x S x S]. ``build_network`` is the one way to make a
network: training, checkpoint loading and the app's checks all build through it.
``network_cost`` measures what a config's network would cost (parameters, activation memory)
without building it for real, and ``over_budget`` refuses an untrusted one beyond the budget.

A new kind of network is its module and one entry in ``KINDS``. How a network samples fast
(BatchNorm folding, the fused Triton kernels) is ``runtime``'s business: a kind it does not know
samples eagerly or through torch.compile.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

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


def _unet_activation_bound(config: UNetConfig) -> int:
    """An upper bound of the bytes of every tensor that one float32 forward pass of one image
    creates (so of the peak of those alive at once): per block at most 12 maps of the most
    channels a tensor at its level holds (the concatenation of the widest neighbouring level with
    its skip, plus the embedding), per attention block 12 more and 4 attention matrices per head
    (HW x HW); per level a pooled and an upsampled map; the stem, embedding and head maps. Cheap:
    ``over_budget`` measures only the networks this does not prove small."""
    w, S, E, d = config.widths, config.image_size, config.embedding_dims, config.block_depth
    total = 4 * (config.channels + E + w[0]) * S * S
    for k, r in enumerate(config.resolutions):
        widest = 2 * max(w[max(k - 1, 0):k + 2]) + (E if k == 0 else 0)
        blocks = 2 * d if k < len(w) - 1 else d
        per_block = 12 * widest * r * r
        if r in config.attention_resolutions:
            per_block += 12 * widest * r * r + 4 * config.attention_heads * (r * r) ** 2
        total += blocks * per_block + 2 * widest * r * r
    return 4 * total


@dataclass(frozen=True)
class NetworkKind:
    """One kind of network: its config, its builder, and the size limits of an untrusted config."""

    config: type  # frozen dataclass of the [network] table; its ``kind`` field defaults to the kind's name
    build: Callable[[Any], nn.Module]  # config -> a freshly initialised network in train mode
    beyond_limits: Callable[[Any], str | None]  # config -> the limits it exceeds, or None
    # config -> bytes that one image's activations cannot exceed (optional, cheap): spares the measurement
    activation_bound: Callable[[Any], int] | None = None


KINDS: dict[str, NetworkKind] = {
    "unet": NetworkKind(UNetConfig, UNet, _unet_beyond_limits, _unet_activation_bound),  # the reference design
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


# The budget of a network that a description read from disk may ask for, checked before any real
# allocation (``over_budget``): the shipped checkpoints hold 4.3 to 10.4 million parameters and
# need 7 to 13 MiB of activations for one image.
MAX_PARAMETERS = 250_000_000
MAX_ACTIVATION_BYTES = 1 << 30


@dataclass(frozen=True)
class NetworkCost:
    """What a network of a config costs, measured without memory (``network_cost``)."""

    parameters: int
    activation_bytes: int  # peak bytes of activations alive at once, one float32 image, no gradients


class _PeakBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storage that the operations run under it create and that are
    still referenced, and the peak of that sum (views share their base's storage: counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage id -> [tensors referencing it, bytes]
        self.now = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live:
                    self.live[key][0] += 1
                else:
                    self.live[key] = [1, storage.nbytes()]
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                weakref.finalize(t, self._release, key)
        return out


@functools.lru_cache(maxsize=256)
def network_cost(config: Any) -> NetworkCost:
    """The parameter count of ``config``'s network and the peak activation memory of one forward
    pass of one image at the config's size (float32, inference), measured on fake tensors: every
    tensor has its shape and dtype but meta storage, so nothing is allocated whatever the config
    asks for, and any network that runs on the CPU runs here. The global random state is left as
    it was. The first call of a process loads torch's tracing machinery (seconds); a
    config's cost is remembered."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    size, channels = config.image_size, config.channels
    with torch.random.fork_rng(devices=[]), FakeTensorMode():
        network = build_network(config).eval()
        x = torch.empty(1, channels, size, size)
        variance = torch.empty(1)
        peak = _PeakBytes()
        with torch.inference_mode(), peak:
            network(x, variance)
    return NetworkCost(count_parameters(network), peak.peak)


@functools.lru_cache(maxsize=256)
def over_budget(config: Any) -> str | None:
    """Why a network of ``config`` is too costly to build (``MAX_PARAMETERS``,
    ``MAX_ACTIVATION_BYTES``), or None. A network that its kind's ``activation_bound`` and a
    parameter count on the meta device prove small is not measured (measuring first loads
    torch's tracing machinery, seconds per process). Cached like ``network_cost`` (configs are
    frozen): the app checks every listed description at every rerun."""
    bound = network_kind(getattr(config, "kind", None)).activation_bound
    if bound is not None and bound(config) <= MAX_ACTIVATION_BYTES:
        with torch.device("meta"):
            if count_parameters(build_network(config)) <= MAX_PARAMETERS:
                return None
    cost = network_cost(config)
    if cost.parameters > MAX_PARAMETERS or cost.activation_bytes > MAX_ACTIVATION_BYTES:
        return (f"the network asks for {cost.parameters:,} parameters (limit {MAX_PARAMETERS:,}) and "
                f"{cost.activation_bytes / 2**30:.2f} GiB of activations for one {config.image_size}x"
                f"{config.image_size} image (limit {MAX_ACTIVATION_BYTES / 2**30:g} GiB)")
    return None
