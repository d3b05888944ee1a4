"""The CLI's commands: each turns its parsed flags (``cli.build_parser``) into typed calls of the core and
prints what it did. Seeds are read by ``seeds.parse_seeds``, the grammar the app uses too."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import convert_diffusers, export_checkpoint, load_checkpoint
from .config import load_experiment
from .diffusers_import import ddpm_variance
from .files import atomic_write_bytes
from .guidance import NO_GUIDANCE, Guidance, check_weight, guidance
from .images import gif_bytes, make_grid, save_png
from .model import AUTO
from .samplers import SamplerConfig
from .seeds import parse_seeds
from .training import RunOptions, Trainer, compile_settings, resolve_device


def _autocast(args) -> str | None:
    """--fp32: float32 everywhere; otherwise the Denoiser's default (bf16 autocast on CUDA)."""
    return None if args.fp32 else AUTO


def _sampler(args, model=None) -> SamplerConfig:
    """The flags' sampler; DDPM on ``model`` with the step variance its scheduler config names."""
    variance = ddpm_variance(model.description) if model is not None and args.sampler == "ddpm" else "posterior"
    return SamplerConfig(args.sampler, args.steps, args.eta, args.clip, variance)


def _guidance(args, model) -> Guidance | None:
    """--guide and --guidance: the guide loaded on the model's device and checked against it."""
    guide = load_checkpoint(args.guide, model.device) if args.guide else None
    return guidance(model, guide, args.guidance)


def _guided(g: Guidance | None) -> str:
    return f", guided by {g.guide.name} at w = {g.weight:g}" if g is not None else ""


def train(args: argparse.Namespace) -> int:
    from .data import load_image_set

    exp = load_experiment(args.config)
    exp = exp.with_overrides(
        train={k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size}.items() if v is not None},
        data={"samples": args.samples} if args.samples is not None else {},
        network={"image_size": args.image_size} if args.image_size is not None else {},
    )
    device, rank, world = distributed(resolve_device(args.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    images = load_image_set(args.data, exp.network.image_size, exp.data.samples, seed=exp.train.seed,
                            cache_dir=args.cache_dir, progress=not args.quiet and rank == 0)
    if exp.train.batch_size > len(images):
        raise ValueError(f"batch size {exp.train.batch_size} (train.batch_size or --batch-size) is larger than the "
                         f"{len(images)} training images of {images.source}; lower it or use more images")
    dataset = {"name": images.name, "source": images.source, "available": images.num_available}
    compile, compile_mode = compile_settings(device, world, args.compile, args.compile_mode)
    options = RunOptions(device=device, compile=compile, compile_mode=compile_mode, max_steps=args.max_steps,
                         time_limit=args.time_limit, progress=not args.quiet, rank=rank, world_size=world,
                         sync_batchnorm=args.sync_batchnorm, keep_snapshots=args.keep_snapshots)
    try:
        trainer = Trainer(exp, images.images, args.out, options, dataset)
        if trainer.resume():
            if args.no_resume:
                raise ValueError(f"{args.out} already holds a training state; remove --no-resume or use a new folder")
            say(f"resuming {args.out} at step {trainer.step} of {trainer.total_steps}")
        say(f"{exp.name}: {len(images)} images at {exp.network.image_size}px, {trainer.total_steps} steps "
            f"({exp.train.epochs} epochs x {trainer.steps_per_epoch}), device {device}, {world} process(es)")
        summary = trainer.run()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    say(f"stopped at step {summary['steps']} ({summary['epochs']:.2f} epochs), loss {summary['loss']:.4f}, "
        f"{'finished' if summary['finished'] else 'not finished: run the same command again to continue'}")
    return 0


def distributed(device: str) -> tuple[str, int, int]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, one GPU per
    process by LOCAL_RANK; gloo on CPU) and return (device, rank, world size)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device, 0, 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device, torch.distributed.get_rank(), world


def sample(args: argparse.Namespace) -> int:
    from .generate import generate

    seeds = parse_seeds(args.seeds)
    model = load_checkpoint(args.checkpoint, resolve_device(args.device))
    guide = _guidance(args, model)
    start = time.perf_counter()
    images = generate(model, seeds, _sampler(args, model), autocast=_autocast(args), compile=args.compile, guidance=guide)
    path = save_png(make_grid(images, args.cols), args.out)
    print(f"{len(images)} images{_guided(guide)} in {time.perf_counter() - start:.1f} s -> {path}")
    return 0


def interpolate(args: argparse.Namespace) -> int:
    from .generate import interpolation_frames

    seeds = parse_seeds(args.seeds)
    model = load_checkpoint(args.checkpoint, resolve_device(args.device))
    guide = _guidance(args, model)
    frames = interpolation_frames(model, seeds, args.frames, args.method, _sampler(args, model),
                                  autocast=_autocast(args), guidance=guide)
    out = Path(args.out)
    if out.suffix.lower() == ".gif":
        atomic_write_bytes(out, gif_bytes(frames, duration_ms=100, scale=2))
    else:
        save_png(make_grid(frames, cols=len(frames)), out)
    print(f"{len(frames)} frames ({args.method}{_guided(guide)}) -> {out}")
    return 0


def invert(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .data import decode_image
    from .files import read_regular_file
    from .generate import invert as invert_images

    try:  # before the model: a missing or unfit file fails at once
        raw = read_regular_file(args.image)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {args.image}") from None
    model = load_checkpoint(args.checkpoint, resolve_device(args.device))
    try:
        image = decode_image(raw, model.experiment.network.image_size)[None]
    except ValueError as e:
        raise ValueError(f"{args.image}: {e}") from None
    noise, recon = invert_images(model, image, args.steps, args.refine)
    err = np.abs(recon.astype(np.int16) - image.astype(np.int16)).mean()
    save_file({"noise": noise.cpu().contiguous()}, f"{args.out}.safetensors")
    save_png(make_grid(np.concatenate([image, recon])), f"{args.out}.png")
    print(f"noise std {noise.std().item():.3f}; reconstruction mean abs error {err:.2f}/255 -> {args.out}.png")
    return 0


def export(args: argparse.Namespace) -> int:
    shard = int(args.shard_mib * 2**20) if args.shard_mib else None
    paths = export_checkpoint(args.run, args.dest, shard)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def convert(args: argparse.Namespace) -> int:
    paths = convert_diffusers(args.folder, args.dest)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvaluationOptions, evaluate_checkpoint

    weights = list(dict.fromkeys(check_weight(w) for w in args.guidance))  # all checked before the first run
    if not args.guide and weights != [NO_GUIDANCE]:
        raise ValueError("--guidance other than 1 needs --guide (a guide checkpoint)")
    for w in weights:  # one evaluation per weight: FID against w
        if len(weights) > 1:
            print(f"# guidance {w:g}")
        options = EvaluationOptions(
            checkpoint=args.checkpoint, data=args.data, sampler=_sampler(args), num_samples=args.num_samples,
            feature_batch=args.batch_size, device=args.device, fid_weights=args.fid_weights, cache_dir=args.cache_dir,
            memorization=args.memorization, write=not args.no_write, autocast=_autocast(args), compile=args.compile,
            equal_n_splits=3, guide=args.guide, guidance=w)
        result = evaluate_checkpoint(options)
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0
