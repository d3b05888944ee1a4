"""On a GPU machine without the data set: sample a shipped checkpoint for a range of seeds under
several sampler settings and keep only the samples' FID Inception features, as float16
[N x 2048] in one .npz (4 KiB per sample and setting: small to copy back). The real images'
features and the distances are computed where the data set is (finish_table.py).

    python3 scripts/gpu/sample_features.py checkpoints/ours2_eps --fid-weights W --seeds 0:728 \
        --config ddim:50:1 --config ddpm:1000:0 --out part0.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import numpy as np
import torch

from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.fid import load_feature_extractor
from diffusion_core.files import atomic_write
from diffusion_core.generate import generate
from diffusion_core.samplers import SamplerConfig


def parse_config(text: str) -> SamplerConfig:
    sampler, steps, eta = text.split(":")
    return SamplerConfig(sampler, int(steps), float(eta))


def key(config: SamplerConfig) -> str:
    """The .npz array name of a setting, e.g. ddim_50_1 (sampler names may hold "_": dpmpp_2m)."""
    return f"{config.name}_{config.num_steps}_{config.eta:g}"


def config_of(array_name: str) -> SamplerConfig:
    """The inverse of ``key``."""
    sampler, steps, eta = array_name.rsplit("_", 2)
    return SamplerConfig(sampler, int(steps), float(eta))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--fid-weights", required=True)
    p.add_argument("--seeds", required=True, help="START:STOP")
    p.add_argument("--config", action="append", type=parse_config, required=True, help="SAMPLER:STEPS:ETA")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    start, stop = (int(v) for v in args.seeds.split(":"))
    model = load_checkpoint(args.checkpoint, args.device)
    extractor = load_feature_extractor(args.fid_weights, args.device, batch_size=200)
    autocast = torch.bfloat16 if args.device.startswith("cuda") else None  # as collect.py evaluates
    arrays: dict[str, np.ndarray] = {"seeds": np.arange(start, stop)}
    for config in args.config:
        t0 = time.perf_counter()
        samples = generate(model, list(range(start, stop)), config, autocast, per_image_noise=False)
        arrays[key(config)] = extractor(samples).astype(np.float16)
        print(f"{key(config)}: {stop - start} samples and features in {time.perf_counter() - t0:.1f} s", flush=True)
        atomic_write(args.out, lambda f: np.savez(f, **arrays))  # after each setting: a process stopped early keeps what it has


if __name__ == "__main__":
    main()
