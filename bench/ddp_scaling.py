"""Training over several GPUs: images/s of the real training step (``Trainer.train_step`` under
DDP, as ``torchrun -m diffusion_core train`` runs it) at a fixed per-GPU batch, for each GPU count,
and the scaling efficiency against one GPU.

    python -m bench.ddp_scaling --gpus 1 2 4 8 --per-gpu-batch 64 --config experiments/ddim_08.toml
    python -m bench.ddp_scaling --gpus 1 2 --per-gpu-batch 2 --config tiny.toml --device cpu   # smoke test (gloo)

Each GPU count is one ``torchrun --standalone --nproc_per_node N`` launch of this module in worker
mode: random uint8 images on every device (4 global batches), the config's network and recipe with
``train.batch_size = N x per-GPU batch``, ``--warmup`` untimed steps (compilation, cuDNN
autotuning), then ``--windows`` windows of ``--steps`` steps, each between a device synchronisation
and a barrier of all ranks; the figure is the median window's global images/s. One GPU is the
plain one-process step (no DDP wrapper). Every count compiles in the same ``torch.compile`` mode
(``default`` on CUDA, the Trainer's mode under DDP; ``--compile-mode`` changes it, ``--no-compile``
runs eagerly), so the counts differ by the processes alone.

Efficiency = images/s of N GPUs / (N x images/s of one GPU). The table is printed as markdown and
written as JSON (``--json``, default ``$OUT/ddp_scaling.json`` when ``$OUT`` names a folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCHES_OF_DATA = 4  # global batches of random images each device holds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ddp_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU (process) counts to measure, e.g. 1 2 4 8")
    p.add_argument("--per-gpu-batch", type=int, default=64, help="images per GPU per step (default 64)")
    p.add_argument("--config", default="experiments/ddim_08.toml", help="experiment TOML: network and recipe")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (NCCL) or cpu (gloo, smoke test)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--steps", type=int, default=50, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows; the median counts")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the step (default: on for CUDA, off for CPU)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for every count (default: default)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per GPU count before it is given up")
    p.add_argument("--json", help="write the results here (default $OUT/ddp_scaling.json when OUT is set)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: this process is a rank; write rank 0's result here
    args = p.parse_args(argv)
    for name in ("per_gpu_batch", "warmup", "steps", "windows", "threads"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if any(n < 1 for n in args.gpus):
        p.error(f"--gpus takes counts of at least 1, got {args.gpus}")
    return args


# --- one rank ---------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """One torchrun process: time the training step of its rank; rank 0 writes the figures."""
    from diffusion_core.commands import distributed
    from diffusion_core.config import load_experiment
    from diffusion_core.training import RunOptions, Trainer

    torch.set_num_threads(args.threads)
    device, rank, world = distributed(args.device)  # as `torchrun -m diffusion_core train` joins
    try:
        exp = load_experiment(args.config).with_overrides(
            train={"batch_size": args.per_gpu_batch * world, "sample_every": 0, "checkpoint_every": 0})
        size = exp.network.image_size
        images = np.random.default_rng(0).integers(0, 256, (BATCHES_OF_DATA * exp.train.batch_size, size, size, 3),
                                                   dtype=np.uint8)
        compile = args.compile if args.compile is not None else args.device == "cuda"
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(exp, images, out, RunOptions(device=device, compile=compile, progress=False, rank=rank,
                                                           world_size=world, compile_mode=args.compile_mode))
            first = time.perf_counter()
            for _ in range(max(1, args.warmup)):
                loss = trainer.train_step()
            _settle(trainer, world)
            warmup_s = time.perf_counter() - first
            rates = []
            for _ in range(args.windows):
                start = time.perf_counter()
                for _ in range(args.steps):
                    loss = trainer.train_step()
                _settle(trainer, world)
                rates.append(args.steps * exp.train.batch_size / (time.perf_counter() - start))
        if rank == 0:
            result = {"gpus": world, "per_gpu_batch": args.per_gpu_batch, "global_batch": exp.train.batch_size,
                      "images_per_s": statistics.median(rates), "window_images_per_s": rates,
                      "warmup_s": round(warmup_s, 1), "final_loss": float(loss), "network": exp.to_dict()["network"],
                      "compiled": compile, "compile_mode": args.compile_mode if compile else None,
                      "device": _device_name(device), "versions": _versions(args.device)}
            Path(args.worker).write_text(json.dumps(result))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _settle(trainer, world: int) -> None:
    """Wait for this rank's device, then for every rank."""
    if trainer.cuda:
        torch.cuda.synchronize(trainer.device)
    if world > 1:
        torch.distributed.barrier()


def _versions(device: str) -> dict[str, Any]:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        versions.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                        nccl=".".join(map(str, torch.cuda.nccl.version())))
    return versions


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"


# --- the launcher -----------------------------------------------------------------------------
def launch(args: argparse.Namespace, gpus: int) -> dict[str, Any]:
    """One torchrun launch for ``gpus`` processes; its rank 0's figures, or the reason it failed."""
    if args.device == "cuda" and gpus > torch.cuda.device_count():
        return {"gpus": gpus, "error": f"only {torch.cuda.device_count()} GPU(s) here"}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
               "-m", "bench.ddp_scaling", *_worker_args(args), "--worker", str(result)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS=str(args.threads))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"gpus": gpus, "error": f"no result within {args.timeout:.0f} s"}
        if r.returncode or not result.exists():
            lines = [ln for ln in r.stderr.splitlines() if "Error" in ln] or r.stderr.splitlines() or ["no output"]
            return {"gpus": gpus, "error": f"exit {r.returncode}: {lines[-1][:300]}"}
        return json.loads(result.read_text())


def _worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--per-gpu-batch", str(args.per_gpu_batch), "--config", str(Path(args.config).resolve()),
           "--device", args.device, "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--windows", str(args.windows), "--compile-mode", args.compile_mode, "--threads", str(args.threads)]
    if args.compile is not None:
        out.append("--compile" if args.compile else "--no-compile")
    return out


def scaling(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured count with its speed-up and efficiency against the one-GPU figure (the
    smallest count measured when one GPU is not among them): speed-up = ips_N / ips_base,
    efficiency = speed-up / (N / N_base)."""
    measured = [r for r in results if "images_per_s" in r]
    if not measured:
        return results
    base = min(measured, key=lambda r: r["gpus"])
    out = []
    for r in results:
        if "images_per_s" in r:
            speedup = r["images_per_s"] / base["images_per_s"]
            r = dict(r, speedup=speedup, efficiency=speedup / (r["gpus"] / base["gpus"]))
        out.append(r)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| GPUs | global batch | images/s | images/s per GPU | speed-up | efficiency |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['gpus']} | | {r['error']} | | | |")
            continue
        lines.append(f"| {r['gpus']} | {r['global_batch']} | {r['images_per_s']:,.0f} | "
                     f"{r['images_per_s'] / r['gpus']:,.0f} | {r['speedup']:.2f}x | {100 * r['efficiency']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if not Path(args.config).is_file():
        print(f"--config {args.config}: no such file", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here (use --device cpu for the gloo smoke test)", file=sys.stderr)
        return 2
    rows = scaling([launch(args, n) for n in args.gpus])
    measured = [r for r in rows if "images_per_s" in r]
    card = measured[0]["device"] if measured else args.device
    versions = ", ".join(f"{k} {v}" for k, v in (measured[0]["versions"] if measured else {}).items())
    print(f"{Path(args.config).name}, {args.per_gpu_batch} images per GPU, {card} ({versions}), "
          f"{args.windows} windows of {args.steps} steps after {args.warmup}")
    print(table(rows))
    target = args.json or (os.path.join(os.environ["OUT"], "ddp_scaling.json") if os.environ.get("OUT") else None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps({"command": " ".join(["python -m bench.ddp_scaling", *argv]),
                                            "config": args.config, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0 if measured and len(measured) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
