"""Test helpers: tiny models and checkpoints made on the fly (no shipped weights needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffusion_core.checkpoint import describe_model, save_checkpoint
from diffusion_core.config import DataConfig, ExperimentConfig, TrainConfig
from diffusion_core.model import PixelNormalization
from diffusion_core.schedules import ScheduleConfig
from diffusion_core.unet import UNet, UNetConfig


def tiny_experiment(name: str = "tiny", image_size: int = 16, schedule: str = "continuous_cosine",
                    widths=(8, 16), block_depth: int = 1, **train) -> ExperimentConfig:
    return ExperimentConfig(
        name=name, family="ddpm" if schedule != "continuous_cosine" else "ddim",
        schedule=ScheduleConfig(kind=schedule, num_timesteps=1000),
        network=UNetConfig(widths=tuple(widths), block_depth=block_depth, image_size=image_size),
        data=DataConfig(augment="none"),
        train=TrainConfig(**{"epochs": 2, "batch_size": 8, "sample_every": 0, "checkpoint_every": 0, **train}),
    )


def make_tiny_checkpoint(folder: str | Path, name: str = "tiny", image_size: int = 16,
                         schedule: str = "continuous_cosine", seed: int = 0, dtype=torch.float16,
                         metrics: dict | None = None) -> Path:
    """A randomly initialised (head included, so outputs depend on the input) tiny checkpoint;
    returns the path of its .json description."""
    exp = tiny_experiment(name, image_size, schedule)
    torch.manual_seed(seed)
    net = UNet(exp.network)
    with torch.no_grad():
        net.head.weight.normal_(0, 0.05)
    desc = describe_model(exp, PixelNormalization((0.45, 0.4, 0.35), (0.25, 0.25, 0.25)), net,
                          training={"dataset": {"name": "synthetic", "size": 0}, "images_seen": 0,
                                    "wall_time_s": 0.0, "epochs_completed": 0},
                          metrics=metrics or {})
    paths = save_checkpoint(Path(folder) / name, net.state_dict(), desc, dtype=dtype)
    return paths[0]


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 images [N x S x S x 3]."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 4, 4, 3))
    up = np.kron(base, np.ones((1, size // 4, size // 4, 1)))
    return (np.clip(up + 0.1 * rng.standard_normal(up.shape), 0, 1) * 255).astype(np.uint8)
