"""Training throughput: our real training step (``Trainer.train_step``) eager and compiled, at two
batch sizes and three networks; diffusers and denoising-diffusion-pytorch at the same batch; and
the check that the optimised step learns like the plain float32 one (loss curves).

    python -m bench.bench_train --device cuda            # about 6.5 minutes on one H100, 4 of them compiling
    python -m bench.bench_train --device cpu --quick     # smoke test
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from typing import Callable

import numpy as np
import torch

from bench import peers
from bench.common import (REFERENCE, TINY, Case, Row, Settings, Timing, describe, forward_gflop_per_image, full_fp32,
                          main, measure, release_memory)
from diffusion_core.config import DataConfig, ExperimentConfig, TrainConfig
from diffusion_core.networks import count_parameters
from diffusion_core.training import RunOptions, Trainer
from diffusion_core.unet import UNet, UNetConfig

WIDE = UNetConfig(widths=(32, 64, 96, 128, 256), block_depth=4, image_size=80)  # seed DDIM experiment 8
LARGE = UNetConfig(widths=(32, 64, 96, 128), block_depth=2, image_size=128)  # seed DDIM experiments 1-3


def experiment(network: UNetConfig, batch: int) -> ExperimentConfig:
    """The reference recipe (continuous cosine schedule, L1 on eps, AdamW, EMA 0.999, clipping at 1)
    with random flips; [-1, 1] normalisation only spares computing statistics of random data."""
    return ExperimentConfig(name="bench", network=network,
                            data=DataConfig(augment="flip", normalization="minus_one_one"),
                            train=TrainConfig(batch_size=batch, sample_every=0, checkpoint_every=0))


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [N x S x S x 3]."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def unet_gflop(network: UNetConfig, device: torch.device) -> float:
    net = UNet(network).to(device)
    x = torch.randn(2, 3, network.image_size, network.image_size, device=device)
    return forward_gflop_per_image(lambda: net(x, torch.rand(2, device=device)), 2)


def _first_call(timing) -> str:
    return f"first call {timing.first_call_s:.1f} s"


# --- our step ---------------------------------------------------------------------------------
def our_step(settings: Settings, network: UNetConfig, batch: int, compile: bool) -> Row:
    """Trainer.train_step on random uint8 images held on the device (16 batches an epoch)."""
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(experiment(network, batch), random_images(16 * batch, network.image_size), out,
                          RunOptions(device=str(settings.device), compile=compile, progress=False,
                                     compile_mode=settings.compile_mode))
        timing = measure(trainer.train_step, batch, settings)
    precision = "bf16 autocast, channels_last" if settings.cuda else "fp32"
    return Row(params=count_parameters(trainer.network), gflop_per_image=unet_gflop(network, settings.device),
               images_per_s=timing.images_per_s, note=f"{precision}; {_first_call(timing)}")


def plain_trainer(exp: ExperimentConfig, images: np.ndarray, out: str, device: torch.device) -> Trainer:
    """The same training step without its CUDA speed-ups: float32 (no autocast), contiguous
    tensors, eager. The core has no option for this, so two attributes are set by hand."""
    trainer = Trainer(exp, images, out, RunOptions(device=str(device), progress=False))
    trainer.cuda = False  # read by Trainer._loss_of (channels_last, bf16 autocast)
    for net in (trainer.network, trainer.ema):
        net.to(memory_format=torch.contiguous_format)
    return trainer


def loss_curves(settings: Settings) -> Row:
    """Compiled bf16 step vs plain fp32 step (TF32 off), same seed, same data, same noise:
    mean |difference| of the two loss curves' moving averages relative to the loss level."""
    network, batch = (TINY, 4) if settings.quick else (REFERENCE, 64)
    steps = settings.curve_steps
    exp, images = experiment(network, batch), random_images(16 * batch, network.image_size, seed=1)
    with tempfile.TemporaryDirectory() as out:
        with full_fp32(settings.device):
            plain, plain_s = _curve(lambda: plain_trainer(exp, images, out, settings.device), steps)
        release_memory()
        options = RunOptions(device=str(settings.device), compile=True, progress=False,
                             compile_mode=settings.compile_mode)
        fast, fast_s = _curve(lambda: Trainer(exp, images, out, options), steps)
    window = max(1, min(50, steps // 4))
    kernel = np.ones(window) / window
    plain_ma, fast_ma = np.convolve(plain, kernel, mode="valid"), np.convolve(fast, kernel, mode="valid")
    relative = float(np.mean(np.abs(fast_ma - plain_ma)) / np.mean(plain_ma))
    note = (f"{steps} steps, batch {batch}: {window}-step moving averages differ by {100 * relative:.2f}% of the loss "
            f"(final {plain_ma[-1]:.4f} fp32 vs {fast_ma[-1]:.4f}); {plain_s:.0f} s vs {fast_s:.0f} s")
    metrics = {"relative_difference": relative, "window": window, "steps": steps, "seconds": [plain_s, fast_s],
               "plain_curve": plain.tolist(), "optimised_curve": fast.tolist()}
    return Row(note=note, metrics=metrics)


def _curve(make_trainer: Callable[[], Trainer], steps: int) -> tuple[np.ndarray, float]:
    """Losses of the first ``steps`` steps (one device sync at the end) and the seconds taken."""
    start = time.perf_counter()
    trainer = make_trainer()
    losses = torch.stack([trainer.train_step() for _ in range(steps)]).cpu().double().numpy()
    return losses, time.perf_counter() - start


# --- peers ------------------------------------------------------------------------------------
def _device_images(settings: Settings, n: int, size: int) -> torch.Tensor:
    """uint8 [N x 3 x S x S] on the device, as our Trainer holds its data set."""
    return torch.from_numpy(random_images(n, size)).to(settings.device).permute(0, 3, 1, 2)


def _compiled_or_eager(settings: Settings, make_step: Callable[[bool], Callable], batch: int) -> tuple[Timing, str]:
    """Time make_step(compile=True); if compilation fails, fall back to eager and say so."""
    try:
        timing = measure(make_step(True), batch, settings)
        return timing, f"compiled; {_first_call(timing)}"
    except Exception as e:  # noqa: BLE001 - any compiler failure: report and run eagerly
        reason = str(e).splitlines()[0] if str(e) else ""
        print(f"compile failed ({type(e).__name__}: {reason}); running eagerly", flush=True)
        release_memory()
        return measure(make_step(False), batch, settings), f"eager (compile failed: {type(e).__name__})"


def diffusers_step(settings: Settings) -> Row:
    size, widths, layers, batch = (16, (32, 32), 1, 8) if settings.quick else (64, (32, 64, 96, 128), 2, 256)
    torch.manual_seed(0)
    unet = peers.diffusers_unet(size, widths, layers).to(settings.device, memory_format=torch.channels_last)
    images = _device_images(settings, 16 * batch, size)
    x = torch.randn(2, 3, size, size, device=settings.device)
    gflop = forward_gflop_per_image(lambda: unet(x, torch.tensor([10, 500], device=settings.device)), 2)

    def make_step(compile: bool):
        net = torch.compile(unet) if compile else unet
        return peers.adamw_step(peers.diffusers_loss(net, images, batch), unet.parameters(), settings.device)

    timing, how = _compiled_or_eager(settings, make_step, batch)
    return Row(params=count_parameters(unet), gflop_per_image=gflop, images_per_s=timing.images_per_s,
               note=f"UNet2DModel {list(widths)} x{layers}, MSE, bf16, channels_last, {how}; no EMA/clip")


def ddp_step(settings: Settings) -> Row:
    dim, mults, size, batch = (8, (1, 2), 16, 8) if settings.quick else (32, (1, 2, 3, 4), 64, 256)
    torch.manual_seed(0)
    diffusion = peers.ddp_diffusion(dim, mults, size).to(settings.device)
    images = _device_images(settings, 16 * batch, size)
    x = torch.randn(2, 3, size, size, device=settings.device)
    gflop = forward_gflop_per_image(lambda: diffusion.model(x, torch.tensor([10, 500], device=settings.device)), 2)
    step = peers.adamw_step(peers.ddp_loss(diffusion, images, batch), diffusion.parameters(), settings.device)
    timing = measure(step, batch, settings)
    return Row(params=count_parameters(diffusion.model), gflop_per_image=gflop, images_per_s=timing.images_per_s,
               note=f"Unet(dim={dim}, dim_mults={mults}) in GaussianDiffusion, its loss, bf16, eager; no EMA/clip")


# --- the list ---------------------------------------------------------------------------------
def cases(settings: Settings) -> list[Case]:
    big, small = (8, 4) if settings.quick else (256, 64)
    ref, wide, large = (TINY, TINY, TINY) if settings.quick else (REFERENCE, WIDE, LARGE)
    ours = [(ref, big, False), (ref, big, True), (ref, small, False), (ref, small, True),
            (wide, big, True), (large, big, True)]
    out = [Case("train", f"ours {describe(net)}, batch {b}, {'compiled' if c else 'eager'}",
                partial(our_step, settings, net, b, c)) for net, b, c in ours]
    out += [Case("train peers", f"diffusers, batch {big}", partial(diffusers_step, settings)),
            Case("train peers", f"denoising-diffusion-pytorch, batch {big}", partial(ddp_step, settings)),
            Case("quality", "training: compiled bf16 vs eager fp32 loss curves", partial(loss_curves, settings))]
    return out


if __name__ == "__main__":
    main([cases], description=__doc__.splitlines()[0])
