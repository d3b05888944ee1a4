"""The fused Triton sampling network (diffusion_core/fused/unet.py) against cuDNN and Inductor, on one GPU.

1. Every fused convolution launch of the reference network (batch 256, 64x64) next to cuDNN's
   time for the bare convolutions it replaces (bias, SiLU, residual and concatenation not counted
   for cuDNN), and the Triton pooling/upsampling next to PyTorch's channels_last kernels. Each
   operation is timed as a CUDA graph of 10 launches, so launch overhead is not counted.
   ``--sweep`` also times each launch over a set of tile configurations.
2. One network call: folded eager, folded compiled (Inductor), fused eager, fused as a CUDA graph.
3. 50-step DDIM of 256 images through ``Denoiser`` and ``sample_steps``: folded + compiled
   against the fused CUDA graph, and both against float32 sampling of the same noise.
4. ``--checkpoints``: the shipped checkpoints' networks, one call of 256 images: folded eager
   against the fused CUDA graph, with the fused network's first call.

    python -m bench.bench_fused --device cuda --checkpoints checkpoints   # about 3 minutes on one H100
Writes $OUT/bench_fused.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.bench_sample import random_network
from bench.common import REFERENCE, full_fp32
from diffusion_core import runtime
from diffusion_core.checkpoint import find_checkpoints, load_checkpoint
from diffusion_core.folding import fold_batchnorm
from diffusion_core.fused import conv as fc
from diffusion_core.fused import resample as fr
from diffusion_core.fused.unet import CudaGraphed, FusedUNet, nchw_view
from diffusion_core.model import Denoiser, PixelNormalization
from diffusion_core.samplers import SamplerConfig, sample, sample_steps
from diffusion_core.schedules import ScheduleConfig

SWEEP = [  # block_n 0: from the output width, as the default; else at most that
    fc.Tiles(128, 0, 32, 4, 3), fc.Tiles(64, 0, 32, 4, 3), fc.Tiles(128, 0, 64, 4, 3), fc.Tiles(256, 0, 32, 8, 3),
    fc.Tiles(32, 0, 32, 4, 3), fc.Tiles(64, 64, 32, 4, 3),
    # narrower column tiles: 96 output channels fill 128-wide tiles only three quarters (and spill)
    fc.Tiles(128, 32, 32, 4, 3), fc.Tiles(64, 32, 32, 4, 3),
    # tiles of four whole image rows (32- and 64-wide maps)
    fc.Tiles(0, 0, 32, 2, 3, rows=4), fc.Tiles(0, 0, 32, 2, 2, rows=4), fc.Tiles(0, 0, 32, 4, 3, rows=4),
]


def cuda_ms(fn, reps: int = 20, warm: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls, each timed with CUDA events (launch
    overhead included: for whole calls)."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graph_ms(fn, launches: int = 10, replays: int = 5) -> float:
    """Milliseconds per call of ``fn`` replayed as a CUDA graph of ``launches`` calls: GPU time
    without launch overhead (median over ``replays``)."""
    fn()  # compile / choose algorithms outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    graph.replay()
    return cuda_ms(graph.replay, reps=replays, warm=1) / launches


def record_calls(fused: FusedUNet, x: torch.Tensor, v: torch.Tensor) -> dict[str, list]:
    """The arguments of every fused_conv, upsample2x and avgpool2x call of one network call."""
    calls = {"conv": [], "upsample": [], "pool": []}
    real = {"conv": fc.fused_conv, "upsample": fr.upsample2x, "pool": fr.avgpool2x}

    def spy(kind):
        def call(*args, **kwargs):
            out = real[kind](*args, **kwargs)
            calls[kind].append({"args": args, "kwargs": kwargs, "out_channels": out.shape[-1]})
            return out
        return call

    fc.fused_conv, fr.upsample2x, fr.avgpool2x = spy("conv"), spy("upsample"), spy("pool")
    try:
        with torch.inference_mode():
            fused(x, v)
    finally:
        fc.fused_conv, fr.upsample2x, fr.avgpool2x = real["conv"], real["upsample"], real["pool"]
    return calls


def describe_launch(launch: dict) -> str:
    x, w, bias = launch["args"]
    k = launch["kwargs"]
    n, h, wd, ca = x.shape
    parts = [f"{h}x{wd} 3x3 {ca}"]
    if k.get("skip") is not None:
        parts[0] += f"+{k['skip'].shape[-1]}"
    parts[0] += f"->{launch['out_channels']}"
    if k.get("shortcut"):
        parts.append("1x1 " + "+".join(str(t.shape[-1]) for t in k["shortcut"]))
    if bias.dim() in (2, 4):  # the first block: the noise embedding as a bias per image
        parts.append("bias table per image" if bias.dim() == 4 else "bias per image")
    elif bias.dim() == 3:
        parts.append("bias table")
    if k.get("silu"):
        parts.append("silu")
    if k.get("residual") is not None:
        parts.append("+ residual")
    return ", ".join(parts)


def cudnn_convs(launch: dict) -> list:
    """cuDNN's bare convolutions of one launch (channels_last, no bias), as callables."""
    x, _, _ = launch["args"]
    k = launch["kwargs"]
    c_out = launch["out_channels"]
    inp = nchw_view(torch.cat([x, k["skip"]], 3) if k.get("skip") is not None else x)
    w3 = torch.randn(c_out, inp.shape[1], 3, 3, device=x.device, dtype=x.dtype).contiguous(
        memory_format=torch.channels_last)
    convs = [lambda: F.conv2d(inp, w3, None, padding=1)]
    if k.get("shortcut"):
        sc = k["shortcut"]
        s_in = nchw_view(torch.cat(list(sc), 3) if len(sc) > 1 else sc[0])
        w1 = torch.randn(c_out, s_in.shape[1], 1, 1, device=x.device, dtype=x.dtype).contiguous(
            memory_format=torch.channels_last)
        convs.append(lambda: F.conv2d(s_in, w1, None))
    return convs


def compare_launches(calls: dict[str, list], tune: bool) -> tuple[list[dict], dict]:
    rows, best_tiles = [], {}
    for i, launch in enumerate(calls["conv"]):
        x = launch["args"][0]
        k = launch["kwargs"]
        channels = (x.shape[-1], k["skip"].shape[-1] if k.get("skip") is not None else 0,
                    *[t.shape[-1] for t in k.get("shortcut", ())])
        n, h, w = x.shape[:3]
        default = fc.default_tiles(launch["out_channels"], channels[:2], n * h * w, (h, w))
        candidates = {default: graph_ms(lambda: fc.fused_conv(*launch["args"], **k, tiles=default))}
        for proto in SWEEP if tune else []:
            block_n = min(proto.block_n, default.block_n) if proto.block_n else default.block_n
            t = fc.Tiles(proto.block_m, block_n, proto.block_k, proto.num_warps, proto.num_stages, proto.rows)
            if t in candidates or any(c % t.block_k for c in channels[:2] if c) or (
                    t.rows and (h % t.rows or w not in (32, 64))):
                continue
            try:
                candidates[t] = graph_ms(lambda: fc.fused_conv(*launch["args"], **k, tiles=t))
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory for this tile
                print(f"  launch {i}: {t} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
        best = min(candidates, key=candidates.get)
        best_tiles[launch_key(*launch["args"], **k)] = best
        row = {"what": describe_launch(launch), "fused_ms": candidates[default], "fused_best_ms": candidates[best],
               "best_tiles": best.__dict__, "cudnn_ms": sum(graph_ms(f) for f in cudnn_convs(launch))}
        rows.append(row)
        print(f"{i:2d} {row['what']:<44} fused {1e3 * row['fused_ms']:6.1f} us (best {1e3 * row['fused_best_ms']:6.1f}), "
              f"cuDNN convs {1e3 * row['cudnn_ms']:6.1f} us", flush=True)
    for kind, torch_op in (("upsample", lambda t: F.interpolate(nchw_view(t), scale_factor=2, mode="bilinear",
                                                                  align_corners=False)),
                           ("pool", lambda t: F.avg_pool2d(nchw_view(t), 2))):
        for c in calls[kind]:
            t = c["args"][0]
            triton_fn = fr.upsample2x if kind == "upsample" else fr.avgpool2x
            row = {"what": f"{kind} {tuple(t.shape)}", "fused_ms": graph_ms(lambda: triton_fn(t)),
                   "cudnn_ms": graph_ms(lambda: torch_op(t))}
            row["fused_best_ms"] = row["fused_ms"]
            rows.append(row)
            print(f"   {row['what']:<44} Triton {1e3 * row['fused_ms']:6.1f} us, PyTorch channels_last "
                  f"{1e3 * row['cudnn_ms']:6.1f} us", flush=True)
    return rows, best_tiles


def launch_key(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, skip=None, shortcut=(),
               residual=None, silu=False) -> tuple:
    """What a launch's best tiles depend on: sizes, channel blocks and epilogue."""
    n, h, w, ca = x.shape
    return (n * h * w, h, w, ca, skip.shape[-1] if skip is not None else 0,
            tuple(t.shape[-1] for t in shortcut), weight.shape[1], bias.dim() > 1, silu, residual is not None)


@contextlib.contextmanager
def tiles_from(best: dict[tuple, fc.Tiles]):
    """Within: every fused_conv launch runs with the tiles ``best`` holds for it (the default else)."""
    real = fc.fused_conv

    def tuned(*args, **kwargs):
        return real(*args, tiles=best.get(launch_key(*args, **kwargs)), **kwargs)

    fc.fused_conv = tuned
    try:
        yield
    finally:
        fc.fused_conv = real


def first_call_s(build, x, v) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        build()(x, v)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sweep", action="store_true", help="time each launch over the tile configurations too")
    p.add_argument("--checkpoints", help="folder of checkpoints to time as well (e.g. checkpoints)")
    p.add_argument("--out", default=os.environ.get("OUT", "res/bench"))
    a = p.parse_args()
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    import triton
    result: dict = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__}
    print(json.dumps(result), flush=True)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save():
        (out_dir / "bench_fused.json").write_text(json.dumps(result, indent=1, default=str))

    net = random_network(REFERENCE, device).to(memory_format=torch.channels_last)
    n, s = a.batch, REFERENCE.image_size
    x = torch.randn(n, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)
    v = torch.rand(n, device=device)
    fused = None

    def build():
        nonlocal fused
        fused = FusedUNet(net)
        return fused

    result["fused_first_call_s"] = first_call_s(build, x, v)  # Triton compiling (or its disk cache)
    print(f"fused first call {result['fused_first_call_s']:.1f} s", flush=True)

    with torch.inference_mode():
        with full_fp32(device):
            ref = net(x, v).float()
        out = fused(x, v).float()
    result["call_rel_l2_vs_fp32"] = float((out - ref).norm() / ref.norm())
    print(f"one call, fused bf16 vs fp32: rel L2 {result['call_rel_l2_vs_fp32']:.2e}", flush=True)

    with torch.inference_mode():
        result["launches"], best = compare_launches(record_calls(fused, x, v), a.sweep)
    result["launch_totals_ms"] = {k: sum(r[k] for r in result["launches"]) for k in ("fused_ms", "fused_best_ms", "cudnn_ms")}
    print(f"sums: {result['launch_totals_ms']}", flush=True)
    save()

    folded = fold_batchnorm(net).to(memory_format=torch.channels_last)
    calls = {}
    graphed = CudaGraphed(fused)
    with torch.inference_mode():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            calls["folded eager"] = cuda_ms(lambda: folded(x, v))
            compiled = torch.compile(folded, dynamic=False)
            t0 = time.perf_counter()
            compiled(x, v)
            torch.cuda.synchronize()
            result["inductor_first_call_s"] = time.perf_counter() - t0
            calls["folded compiled (Inductor)"] = cuda_ms(lambda: compiled(x, v))
        calls["fused eager"] = cuda_ms(lambda: fused(x, v))
        calls["fused CUDA graph"] = cuda_ms(lambda: graphed(x, v))
        if a.sweep:
            graphed_tuned = CudaGraphed(fused)
            with tiles_from(best):
                graphed_tuned(x, v)  # captured with the tuned tiles; replays launch no Python
            calls["fused CUDA graph, tuned tiles"] = cuda_ms(lambda: graphed_tuned(x, v))
    result["call_ms"] = calls
    for k, ms in calls.items():
        print(f"network call, batch {n}: {k:<30} {ms:.3f} ms", flush=True)
    save()

    config = SamplerConfig("ddim", a.steps)
    x_T = torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(1)).to(device)
    images, sampling = {}, {}

    def ddim(denoiser, label):
        def run():
            images[label] = sample(sample_steps(denoiser, ScheduleConfig(), x_T, config))
        run()
        torch.cuda.synchronize()
        sampling[label] = n / (cuda_ms(run, reps=5, warm=1) / 1e3)

    with full_fp32(device):
        ddim(Denoiser(net, "v", PixelNormalization(), None), "fp32")
    ddim(Denoiser(folded, "v", PixelNormalization()), "folded eager")
    ddim(Denoiser(compiled, "v", PixelNormalization()), "folded + compiled (Inductor)")
    ddim(Denoiser(fused, "v", PixelNormalization()), "fused eager")
    ddim(Denoiser(graphed, "v", PixelNormalization()), "fused CUDA graph")
    ref = images["fp32"].float()
    result["sampling_images_per_s"] = sampling
    result["sampling_rel_l2_vs_fp32"] = {k: float((images[k].float() - ref).norm() / ref.norm()) for k in images}
    for k, ips in sampling.items():
        print(f"50-step DDIM of {n}: {k:<30} {ips:8.0f} images/s, rel L2 vs fp32 "
              f"{result['sampling_rel_l2_vs_fp32'][k]:.1e}", flush=True)
    save()

    if a.checkpoints:
        result["checkpoints"] = {}
        for path in find_checkpoints(a.checkpoints):
            model = load_checkpoint(path, device)
            cfg = model.network.config
            xc = torch.randn(n, cfg.channels, cfg.image_size, cfg.image_size, device=device).contiguous(
                memory_format=torch.channels_last)
            vc = torch.rand(n, device=device)
            folded_c = runtime.sampling_network(model).to(memory_format=torch.channels_last)
            holder = {}

            def build_c():
                holder["net"] = FusedUNet(model.network)
                return holder["net"]

            first = first_call_s(build_c, xc, vc)
            graphed_c = CudaGraphed(holder["net"])
            with torch.inference_mode():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    ref_c = folded_c(xc, vc).float()
                    eager_ms = cuda_ms(lambda: folded_c(xc, vc))
                graph_c = cuda_ms(lambda: graphed_c(xc, vc))
                rel = float((graphed_c(xc, vc).float() - ref_c).norm() / ref_c.norm())
            result["checkpoints"][path.stem] = {"folded_eager_ms": eager_ms, "fused_graph_ms": graph_c,
                                                "fused_first_call_s": first, "rel_l2_vs_folded_bf16": rel}
            print(f"{path.stem}: {cfg.image_size}px {list(cfg.widths)} d{cfg.block_depth}, batch {n}: folded eager "
                  f"{eager_ms:.2f} ms, fused CUDA graph {graph_c:.2f} ms ({eager_ms / graph_c:.2f}x), first call "
                  f"{first:.1f} s, rel L2 vs folded bf16 {rel:.1e}", flush=True)
            save()


if __name__ == "__main__":
    main()
