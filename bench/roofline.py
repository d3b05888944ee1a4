"""How fast the hardware could run a network at best: the roofline of every aten operation of one
training step (forward + backward + AdamW + EMA) and of one sampling call, from the operations'
FLOPs and the bytes they must move, against a card's peak matrix FLOP/s and memory bandwidth.

Small U-Nets are not bound by FLOPs: a 3x3 convolution of 32 channels does 144 FLOPs per byte
it moves in bf16, below the H100's 236 (790 TFLOP/s / 3.35 TB/s), and normalisation, activation,
concatenation, pooling and upsampling do almost none. So MFU targets need a bandwidth check.
Three ceilings, each as images/s and the MFU it implies:

- ``flops``: every FLOP at the peak (100% MFU).
- ``convolutions only``: each convolution at its roofline, max(FLOPs / peak, bytes / bandwidth),
  everything else fused into them for free: what a perfectly fused implementation could reach.
- ``every operation``: each aten operation of the eager program alone at its roofline (bytes of
  its inputs and outputs in bf16): what an unfused program could reach; Inductor's fusion of the
  pointwise chains lands between the two.

    python -m bench.roofline                        # reference network, H100 figures (no GPU needed)
    python -m bench.roofline --device cuda          # also measure this card's matmul peak and bandwidth
    python -m bench.roofline --widths 32 64 96 128 256 --depth 4 --size 80
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from bench.common import PEAK_FLOPS, REFERENCE
from diffusion_core.unet import UNet, UNetConfig

PEAK_BYTES = 3.35e12  # H100 SXM HBM3 bandwidth, the data sheet's figure
BYTES_PER_ELEMENT = 2  # bf16 activations and gradients (autocast)
OPTIMIZER_BYTES_PER_PARAM = 40  # fused AdamW reads p, g, m, v and writes p, m, v; EMA reads e, p, writes e (fp32)
CONV_OPS = {"convolution", "convolution_backward", "cudnn_convolution", "_convolution"}


@dataclass
class Traffic:
    """Per-operation FLOPs and bytes of one program, grouped by operation name."""

    flops: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    ops: list[tuple[str, float, float]] = field(default_factory=list)  # (name, flops, bytes) per call

    def seconds(self, peak_flops: float, peak_bytes: float, convolutions_only: bool) -> float:
        return sum(max(f / peak_flops, b / peak_bytes) for name, f, b in self.ops
                   if not convolutions_only or name in CONV_OPS)


def _tensor_bytes(tree) -> float:
    return sum(t.numel() * BYTES_PER_ELEMENT for t in tree_flatten(tree)[0]
               if isinstance(t, torch.Tensor) and t.is_floating_point())


class _Counter(TorchDispatchMode):
    def __init__(self, traffic: Traffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False):
            return out  # a view moves no data
        name = func._overloadpacket.__name__
        flops = float(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)) \
            if func._overloadpacket in flop_registry else 0.0
        moved = _tensor_bytes((args, kwargs)) + _tensor_bytes(out)
        self.traffic.flops[name] += flops
        self.traffic.bytes[name] += moved
        self.traffic.ops.append((name, flops, moved))
        return out


def count(config: UNetConfig, training: bool, batch: int = 2) -> Traffic:
    """The operations of one forward (and backward) pass on ``batch`` images, divided by ``batch``:
    per-image figures (the batch-statistics reductions make per-image costs slightly batch-dependent)."""
    torch.manual_seed(0)
    net = UNet(config).train(training)
    s = config.image_size
    x, variance = torch.randn(batch, config.channels, s, s), torch.rand(batch)
    traffic = Traffic()
    with _Counter(traffic):
        if training:
            loss = (net(x, variance) - x).abs().mean()
            loss.backward()
        else:
            with torch.no_grad():
                net(x, variance)
    per_image = Traffic()
    for name, f, b in traffic.ops:
        per_image.ops.append((name, f / batch, b / batch))
        per_image.flops[name] += f / batch
        per_image.bytes[name] += b / batch
    return per_image


def measured_peaks(device: torch.device) -> tuple[float, float]:
    """(bf16 matmul FLOP/s of an 8192^3 product, copy bandwidth in bytes/s of a 1 GiB tensor)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    src = torch.empty(2**29, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)

    def best(fn, reps=10) -> float:
        fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)

    flops = 2 * 8192**3 / best(lambda: a @ a)
    bandwidth = 2 * src.numel() * src.element_size() / best(lambda: dst.copy_(src))
    return flops, bandwidth


def ceilings(config: UNetConfig, peak_flops: float, peak_bytes: float, train_batch: int = 256,
             sampling_steps: int = 50) -> list[dict]:
    """Rows of (program, ceiling, images/s, implied MFU) for one training step and for sampling."""
    rows = []
    params = sum(p.numel() for p in UNet(config).parameters())
    for program, training in (("training step", True), ("sampling", False)):
        t = count(config, training)
        forward_flops = count(config, False).flops
        fwd = sum(forward_flops.values())
        passes = 3 if training else sampling_steps
        extra = params * OPTIMIZER_BYTES_PER_PARAM / train_batch / peak_bytes if training else 0.0
        per_image = {
            "flops": passes * fwd / peak_flops,
            "convolutions only": (t.seconds(peak_flops, peak_bytes, True) + extra) * (1 if training else passes),
            "every operation": (t.seconds(peak_flops, peak_bytes, False) + extra) * (1 if training else passes),
        }
        for ceiling, seconds in per_image.items():
            ips = 1 / seconds
            rows.append({"program": program, "ceiling": ceiling, "images_per_s": ips,
                         "mfu": passes * fwd * ips / peak_flops,
                         "gbytes_per_image": None if ceiling == "flops" else
                         sum(b for n, _, b in t.ops if ceiling == "every operation" or n in CONV_OPS)
                         * (1 if training else passes) / 1e9})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=list(REFERENCE.widths))
    p.add_argument("--depth", type=int, default=REFERENCE.block_depth)
    p.add_argument("--size", type=int, default=REFERENCE.image_size)
    p.add_argument("--device", default="cpu", help="cuda: measure this card's peaks instead of the H100 figures")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    args = p.parse_args(argv)
    config = UNetConfig(widths=tuple(args.widths), block_depth=args.depth, image_size=args.size)
    if args.device.startswith("cuda"):
        peak_flops, peak_bytes = measured_peaks(torch.device(args.device))
        source = f"measured on {torch.cuda.get_device_name(args.device)}"
    else:
        peak_flops, peak_bytes = PEAK_FLOPS, PEAK_BYTES
        source = "H100: measured bf16 matmul, data-sheet bandwidth"
    print(f"## Roofline: widths {list(config.widths)} depth {config.block_depth}, {config.image_size}px; "
          f"{peak_flops / 1e12:.0f} TFLOP/s, {peak_bytes / 1e12:.2f} TB/s ({source})\n")
    print("| program | ceiling | GB moved per image | images/s at most | MFU at that ceiling |\n|---|---|---|---|---|")
    for r in ceilings(config, peak_flops, peak_bytes, sampling_steps=args.steps):
        gb = "" if r["gbytes_per_image"] is None else f"{r['gbytes_per_image']:.3f}"
        print(f"| {r['program']} | {r['ceiling']} | {gb} | {r['images_per_s']:,.0f} | {100 * r['mfu']:.0f}% |")
    heavy = count(config, True)
    total = sum(heavy.bytes.values())
    print("\nBytes moved by one training step, by operation (eager, per image):")
    for name, b in sorted(heavy.bytes.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:34s} {b / 1e6:8.2f} MB  {100 * b / total:5.1f}%")


if __name__ == "__main__":
    main()
