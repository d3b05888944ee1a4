"""Training: AdamW, EMA, the experiment's loss, bf16 autocast and channels_last on CUDA, gradient
clipping, sample grids, JSON-lines log, atomic checkpoints and exact resume.

Exact resume: every random draw of step s (batch order, flips, noise levels, noise) comes from
generators seeded by (seed, epoch) or (seed, s), so a run stopped after step s and resumed from
its state (model, EMA, optimizer, step) continues bit for bit as if it had never stopped.

Output folder ``out/``:
    model.json, model.safetensors   EMA weights (fp32) and description: the usable model
    state-STEP.safetensors          everything to resume (model, EMA, optimizer) at step STEP
    state.json                      the resume manifest, written last: step, wall time, and the
                                    name and SHA-256 of the tensors file it goes with
    log.jsonl                       one JSON object per logged step (cut back to the resumed step),
                                    with the window's loss by noise level (``loss_by_noise``)
    samples/epoch_NNNN.png          sample grids (EMA weights, DDIM)
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import diffusion as D
from .checkpoint import CheckpointError, describe_model, save_checkpoint
from .config import ConfigError, ExperimentConfig
from .files import (atomic_save_tensors, atomic_write_bytes, remove_temporaries, sha256_file, validate_tensors,
                    write_json)
from .images import make_grid, save_png
from .model import PixelNormalization, pixels_to_model
from .networks import build_network
from .samplers import SamplerConfig, sample, sample_steps, seed_noise

CALIBRATION_BATCHES = 32  # batches that re-estimate the EMA network's BatchNorm statistics
NOISE_BUCKETS = 5  # the log's loss by noise level: equal-width bins of the noise variance 1 - abar in [0, 1]

STATE_FORMAT = "diffusion-explorer-train-state/1"


@dataclass(frozen=True)
class RunOptions:
    device: str = "cpu"
    compile: bool = False  # torch.compile the network (falls back cleanly if it fails)
    compile_mode: str | None = None  # torch.compile mode; None: compile_settings chooses
    max_steps: int | None = None  # stop (and save) after this many steps in total
    time_limit: float | None = None  # stop (and save) after this many seconds in this call
    log_every: int = 50
    rank: int = 0  # this process among world_size (torchrun / DDP); rank 0 logs and saves
    world_size: int = 1
    progress: bool = True
    sample_count: int = 16  # images in each sample grid
    sync_batchnorm: bool = False  # under DDP on CUDA: BatchNorm statistics over the whole batch (SyncBatchNorm)
    keep_snapshots: bool = False  # also keep the model of every save as snapshots/step_STEP (FID against time)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_settings(device: str, world_size: int = 1, compile: bool | None = None,
                     mode: str | None = None) -> tuple[bool, str | None]:
    """(compile?, torch.compile mode) for a training run; None means "choose for me".

    On CUDA the training step is compiled by default (for one process the whole loss, network
    included, as one graph; under DDP the network alone), in "reduce-overhead" mode for one
    process: CUDA graphs replay the forward and backward (batch 64 on one H200: 8,554 images/s against
    4,074 in the default mode, one run), with the same
    loss curve as the eager float32 step (0.04% apart over 1,000 steps; docs/performance.md).
    Under DDP (world_size > 1) the mode stays "default": CUDA graphs with DDP's gradient hooks are
    untested here. On the CPU and MPS nothing is compiled unless asked (minutes of C++ builds).
    Naming a mode implies compiling."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if compile is None:
        compile = mode is not None or str(device).startswith("cuda")
    if not compile:
        return False, None
    return True, mode or ("reduce-overhead" if str(device).startswith("cuda") and world_size == 1 else "default")


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 7919 + 17 + rank * 104_729_000_003) % (2**63 - 1)


class Trainer:
    """Trains one experiment on one uint8 image set [N x H x W x 3] into ``out_dir``."""

    def __init__(self, experiment: ExperimentConfig, images: np.ndarray, out_dir: str | Path,
                 options: RunOptions = RunOptions(), dataset: dict[str, Any] | None = None):
        size = experiment.network.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise ValueError(f"training images must be uint8 [N x {size} x {size} x 3], got {images.dtype} {images.shape}")
        self.exp, self.opt = experiment, options
        self.out = Path(out_dir)
        self.device = torch.device(options.device)
        self.cuda = self.device.type == "cuda"
        self.dataset = dict(dataset or {}, size=int(len(images)))
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        # the decoded data set lives on the device; augmentation happens there
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        if experiment.data.normalization == "dataset":
            self.normalization = PixelNormalization.from_images(images)
        else:
            self.normalization = PixelNormalization()
        self._pixel_stats = self.normalization.tensors(self.device)  # mean, std [1 x 3 x 1 x 1]
        self.rank, self.world = options.rank, options.world_size
        n = len(images)
        self.items_per_epoch = 2 * n if experiment.data.augment == "flip_x2" else n
        check_split(experiment.train.batch_size, self.world, self.items_per_epoch)
        torch.manual_seed(experiment.train.seed)  # network initialisation
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.network = build_network(experiment.network).to(self.device, memory_format=fmt)
        if options.sync_batchnorm:
            self.network = with_sync_batchnorm(self.network, self.device.type, self.world)
        self.ema = build_network(experiment.network).to(self.device, memory_format=fmt)
        self.ema.load_state_dict(self.network.state_dict())
        self.ema.eval().requires_grad_(False)
        # the tensors the EMA averages, paired once (load_state_dict copies in place, so they stay valid)
        self._ema_pairs = ([*self.ema.parameters(), *(b for b in self.ema.buffers() if b.is_floating_point())],
                           [*self.network.parameters(), *(b for b in self.network.buffers() if b.is_floating_point())])
        t = experiment.train
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=t.learning_rate,
                                           weight_decay=t.weight_decay, fused=self.cuda)
        self.eager = self.network
        if self.world > 1:  # gradients averaged over the processes; rank r takes rows r::world
            from torch.nn.parallel import DistributedDataParallel

            self.eager = DistributedDataParallel(self.network, device_ids=[self.device.index] if self.cuda else None)
        self.forward = self.eager
        self.loss_of = self._loss_of
        if options.compile:
            _, mode = compile_settings(options.device, self.world, True, options.compile_mode)
            try:
                if self.world == 1:  # the whole loss: data preparation, forward and loss fuse with the network
                    self.loss_of = torch.compile(self._loss_of, mode=mode)
                else:  # DDP's gradient hooks: compile the network alone (torch.compile's DDP support)
                    self.forward = torch.compile(self.eager, mode=mode)
            except Exception as e:  # noqa: BLE001 - any backend failure falls back to eager
                print(f"torch.compile unavailable ({e}); training eagerly")
        self.levels = D.TrainingNoiseLevels(experiment.schedule, self.device)
        self.gen = torch.Generator(device=self.device)
        self.step = 0
        self.wall_time = 0.0  # seconds of training so far, every call of run() included
        self._clock: float | None = None  # while run() runs: when wall_time was last brought up to date
        self.last_loss = float("nan")
        # this log window's per-image losses summed by noise level, and their counts (noise_buckets)
        self._bucket_sums = self._bucket_counts = torch.zeros(NOISE_BUCKETS, device=self.device)
        self.steps_per_epoch = max(1, self.items_per_epoch // t.batch_size)  # drop the ragged batch
        self.total_steps = self.steps_per_epoch * t.epochs
        self._order_epoch, self._order = -1, None

    # --- one step -------------------------------------------------------------------------
    def _draws(self, step: int) -> tuple:
        """The random part of a step, drawn eagerly from the step's generator (so a compiled and an
        eager step see the same numbers): (uint8 images [B x 3 x S x S], flip mask [B] or None,
        signal rates [B], noise rates [B], eps [B x 3 x S x S])."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._order_epoch != epoch:  # one shuffle per epoch, seeded by (seed, epoch)
            g = torch.Generator().manual_seed(_step_seed(self.exp.train.seed, -1 - epoch))
            self._order = torch.randperm(self.items_per_epoch, generator=g).to(self.device)
            self._order_epoch = epoch
        b = self.exp.train.batch_size
        idx = self._order[within * b:(within + 1) * b][self.rank::self.world]  # this process's rows
        n = len(self.images)
        images = self.images[idx % n]
        if self.exp.data.augment == "flip_x2":
            flip = idx >= n
        elif self.exp.data.augment == "flip":
            flip = torch.rand(len(idx), generator=self.gen, device=self.device) < 0.5
        else:
            flip = None
        signal, noise = self.levels.draw(len(idx), self.gen)
        eps = torch.randn(images.shape, generator=self.gen, device=self.device)
        return images, flip, signal, noise, eps

    def _loss_of(self, images: torch.Tensor, flip: torch.Tensor | None, signal: torch.Tensor,
                 noise: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The deterministic part of a step, a function of the draws alone (what ``torch.compile``
        compiles as one graph for one process): augmented images in network units, x_t (Ho et al.
        2020, Eq. 4), the network's output under bf16 autocast on CUDA, and the loss on eps or v of
        each image [B] (the step's loss is their mean: every image has as many elements)."""
        x0 = pixels_to_model(images, *self._pixel_stats)
        if flip is not None:
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        if self.cuda:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        s, n = signal[:, None, None, None], noise[:, None, None, None]
        x_t = D.q_sample(x0, s, n, eps)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            out = self.forward(x_t, noise**2).float()
        target = eps if self.exp.train.prediction == "eps" else D.v_from_eps_x0(eps, x0, s, n)
        if self.exp.train.loss == "l1":
            return F.l1_loss(out, target, reduction="none").mean((1, 2, 3))  # [B]: one loss per image
        return F.mse_loss(out, target, reduction="none").mean((1, 2, 3))

    def _lr(self, step: int) -> float:
        t = self.exp.train
        if t.warmup_steps and step < t.warmup_steps:
            return t.learning_rate * (step + 1) / t.warmup_steps
        return t.learning_rate

    def train_step(self) -> torch.Tensor:
        self.gen.manual_seed(_step_seed(self.exp.train.seed, self.step, self.rank))
        self.network.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        draws = self._draws(self.step)
        try:
            per_image = self.loss_of(*draws)
            loss = per_image.mean()
            loss.backward()
        except Exception as e:  # noqa: BLE001 - torch.compile fails lazily, at the first call
            if self.forward is self.eager and self.loss_of == self._loss_of:
                raise
            print(f"compiled training step failed ({type(e).__name__}: {str(e)[:200]}); training eagerly")
            self.forward, self.loss_of = self.eager, self._loss_of
            self.optimizer.zero_grad(set_to_none=True)
            per_image = self.loss_of(*draws)
            loss = per_image.mean()
            loss.backward()
        if self.exp.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.exp.train.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        sums, counts = noise_buckets(per_image.detach(), draws[3] ** 2)  # on the device: no sync
        self._bucket_sums, self._bucket_counts = self._bucket_sums + sums, self._bucket_counts + counts
        # a copy: with CUDA graphs ("reduce-overhead") the compiled loss lives in a buffer that the
        # next step's replay overwrites, and callers keep losses across steps (run() sums a window)
        return loss.detach().clone()

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay of optimizer step ``step`` (0-based): ``ema_decay``, capped early in training
        by (1 + step) / (10 + step) when ``ema_warmup`` is on."""
        t = self.exp.train
        return min(t.ema_decay, (1 + step) / (10 + step)) if t.ema_warmup else t.ema_decay

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, for parameters and BatchNorm statistics
        alike (as the Keras example's EMA over ``network.weights``)."""
        ema, net = self._ema_pairs
        torch._foreach_lerp_(ema, net, 1.0 - self.ema_decay_at(self.step))

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until the last epoch, ``max_steps`` or ``time_limit``; returns a summary."""
        from tqdm import tqdm

        main = self.rank == 0
        self.out.mkdir(parents=True, exist_ok=True)
        if main:
            self.tidy_output()
        stop = self.total_steps if self.opt.max_steps is None else min(self.total_steps, self.opt.max_steps)
        start_step, started = self.step, time.perf_counter()
        self._clock = started
        bar = tqdm(total=stop, initial=self.step, disable=not (self.opt.progress and main), unit="step",
                   dynamic_ncols=True)
        window_loss, window_n, window_t = None, 0, time.perf_counter()
        logfile = open(self.out / "log.jsonl", "a", encoding="utf-8") if main else contextlib.nullcontext()
        with logfile as log:
            while self.step < stop:
                loss = self.train_step()
                window_loss = loss if window_loss is None else window_loss + loss
                window_n += 1
                bar.update(1)
                epoch_done = self.step % self.steps_per_epoch == 0
                if window_n >= self.opt.log_every or epoch_done or self.step == stop:
                    window_loss, window_n, window_t = self._log(log, bar, window_loss, window_n, window_t)
                if epoch_done:
                    self._end_of_epoch(self.step // self.steps_per_epoch)
                if self.opt.time_limit and self._agree(time.perf_counter() - started > self.opt.time_limit):
                    break
        bar.close()
        self._tick()
        self._clock = None
        if main:
            self.save()
        self._barrier()
        return {"steps": self.step, "steps_this_call": self.step - start_step, "finished": self.finished,
                "epochs": self.step / self.steps_per_epoch, "loss": self.last_loss, "wall_time_s": self.wall_time}

    def _log(self, log, bar, window_loss, window_n, window_t):
        now = time.perf_counter()
        loss = float(window_loss) / window_n  # one device sync per logged window
        ips = window_n * self.exp.train.batch_size / max(now - window_t, 1e-9)
        self.last_loss = loss
        counts = self._bucket_counts.tolist()
        by_noise = [s / c if c else None for s, c in zip(self._bucket_sums.tolist(), counts)]
        self._bucket_sums = self._bucket_counts = torch.zeros(NOISE_BUCKETS, device=self.device)
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "loss": loss,
                  "images_per_s": round(ips, 1), "lr": self._lr(self.step - 1), "time": time.time(),
                  "loss_by_noise": by_noise, "noise_counts": [int(c) for c in counts]}
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}")
        return None, 0, now

    def _end_of_epoch(self, epoch: int) -> None:
        t = self.exp.train
        if self.rank == 0 and t.sample_every and epoch % t.sample_every == 0:
            self.sample_grid(self.out / "samples" / f"epoch_{epoch:04d}.png")
        if self.rank == 0 and t.checkpoint_every and epoch % t.checkpoint_every == 0:
            self.save()
        self._barrier()

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def _agree(self, flag: bool) -> bool:
        """True if any process says so (all processes must stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path:
        """A grid of EMA samples from fixed seeds 0..n-1 (so grids of epochs are comparable)."""
        from .model import Denoiser

        denoiser = Denoiser(self.calibrated_ema(), self.exp.train.prediction, self.normalization)  # bf16 on CUDA
        shape = (3, self.exp.network.image_size, self.exp.network.image_size)
        x_T = seed_noise(range(self.opt.sample_count), shape, self.device)
        cfg = SamplerConfig("ddim", min(self.exp.train.sample_steps, 1000), 0.0)
        x0 = sample(sample_steps(denoiser, self.exp.schedule, x_T, cfg))
        return save_png(make_grid(self.normalization.to_pixels(x0)), path)

    # --- saving and resuming ------------------------------------------------------------------
    def training_facts(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "steps": self.step, "epochs_completed": self.step / self.steps_per_epoch,
                "epochs_planned": self.exp.train.epochs, "images_seen": self.step * self.exp.train.batch_size,
                "wall_time_s": round(self.wall_time, 1), "device": _device_name(self.device),
                "final_loss": self.last_loss, "torch": torch.__version__, "finished": self.finished}

    @torch.no_grad()
    def calibrated_ema(self) -> torch.nn.Module:
        """A copy of the EMA network with BatchNorm statistics re-estimated for its own weights.

        The EMA of the running statistics averages statistics of *past training weights*, which
        do not match the averaged weights while they still move (seen on CPU runs: grainy EMA
        samples next to clean raw-network samples). As in SWA's ``update_bn`` (Izmailov et al.
        2018), run training batches (images, noise levels, noise: the training distribution)
        through the EMA weights in train mode with a cumulative average. The training EMA itself
        is left untouched, so exact resume is unaffected. Cached per step.
        """
        if getattr(self, "_calibrated", (None, None))[0] == self.step:
            return self._calibrated[1]
        net = copy.deepcopy(self.ema)
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
        net.train()
        g = torch.Generator(device=self.device).manual_seed(_step_seed(self.exp.train.seed, -(10**6)))
        b = self.exp.train.batch_size
        for _ in range(CALIBRATION_BATCHES):
            idx = torch.randint(0, len(self.images), (b,), generator=g, device=self.device)
            x0 = self.normalization.to_model(self.images[idx])
            signal, noise = self.levels.draw(b, g)
            eps = torch.randn(x0.shape, generator=g, device=self.device)
            x_t = D.q_sample(x0, signal[:, None, None, None], noise[:, None, None, None], eps)
            if self.cuda:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                net(x_t, noise**2)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.eval()
        self._calibrated = (self.step, net)
        return net

    def _tick(self) -> None:
        """Bring ``wall_time`` up to now while run() runs, so that a save in mid-run (a snapshot,
        the resume state) records the training time so far, not that of the earlier calls only."""
        if self._clock is not None:
            now = time.perf_counter()
            self.wall_time += now - self._clock
            self._clock = now

    def save(self) -> None:
        """Write the (BatchNorm-calibrated) EMA model and the full resume state, atomically."""
        self._tick()
        ema = self.calibrated_ema()
        desc = describe_model(self.exp, self.normalization, ema, self.training_facts())
        save_checkpoint(self.out / "model", ema.state_dict(), desc)
        if self.opt.keep_snapshots:  # the same model and description, kept under its step
            save_checkpoint(self.out / "snapshots" / f"step_{self.step:08d}", ema.state_dict(), desc)
        tensors = {f"model.{k}": v for k, v in self.network.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        for i, p in enumerate(self.network.parameters()):
            for k, v in self.optimizer.state.get(p, {}).items():
                tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        # one unit: the tensors under a new name first, then the manifest naming them (with their
        # hash), then the previous tensors go; a kill anywhere leaves a manifest and its own tensors
        name = f"state-{self.step:08d}.safetensors"
        atomic_save_tensors(tensors, self.out / name, {"format": STATE_FORMAT})
        write_json(self.out / "state.json", {"format": STATE_FORMAT, "step": self.step, "wall_time_s": self.wall_time,
                                             "last_loss": self.last_loss, "experiment": self.exp.to_dict(),
                                             "normalization": desc["normalization"], "dataset": self.dataset,
                                             "tensors": name, "sha256": sha256_file(self.out / name)})
        remove_unlisted_states(self.out, keep=name)

    def tidy_output(self) -> None:
        """Before training into the output folder: remove what a killed run left there (temporary
        files, tensors that no manifest names) and cut the loss log back to this run's step, so a
        resumed run logs no step twice."""
        for folder in (self.out, self.out / "samples", self.out / "snapshots"):
            remove_temporaries(folder)
        remove_unlisted_states(self.out, keep=_state_tensors_name(self.out))
        truncate_log(self.out / "log.jsonl", self.step)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """What state.safetensors holds, as meta tensors: the network's and the EMA's state dicts,
        and per parameter i AdamW's optim.i.step, optim.i.exp_avg and optim.i.exp_avg_sq (absent
        before the first step)."""
        meta = lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta")  # noqa: E731
        expected = {f"model.{k}": meta(v) for k, v in self.network.state_dict().items()}
        expected.update({f"ema.{k}": meta(v) for k, v in self.ema.state_dict().items()})
        for i, p in enumerate(self.network.parameters()):
            expected[f"optim.{i}.step"] = torch.empty((), device="meta")
            expected[f"optim.{i}.exp_avg"] = expected[f"optim.{i}.exp_avg_sq"] = meta(p)
        return expected

    def resume(self) -> bool:
        """Load ``state.*`` from the output folder if present; returns whether it did."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        jpath = self.out / "state.json"
        if not jpath.exists():
            return False
        try:
            state = json.loads(jpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{jpath} is not valid JSON: {str(e)[:200]}") from e
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{jpath} is not a training state")
        if not _same_experiment(state.get("experiment"), self.exp):
            raise CheckpointError(f"{jpath} belongs to a different configuration; use a new --out folder")
        if state["dataset"].get("size") != self.dataset.get("size"):
            raise CheckpointError(f"{jpath} was trained on {state['dataset'].get('size')} images, now {self.dataset.get('size')}")
        tpath = self.out / _state_tensors_name(self.out, state)
        if not tpath.is_file():
            raise CheckpointError(f"{jpath} names {tpath.name}, which is missing")
        if ("tensors" in state or "sha256" in state) and sha256_file(tpath) != state.get("sha256"):
            raise CheckpointError(f"{tpath} does not match the SHA-256 that {jpath.name} records (a save was "
                                  "interrupted or the file was changed); use a new --out folder")
        try:
            tensors = load_file(str(tpath), device=str(self.device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{tpath} is not a readable safetensors file: {e}") from e
        expected = self._state_tensors()
        validate_tensors(tensors, expected, str(tpath), against="this run's network and optimizer",
                         optional={k for k in expected if k.startswith("optim.")}, error=CheckpointError)
        self.network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        for i, p in enumerate(self.network.parameters()):
            entries = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
            if entries:
                self.optimizer.state[p] = optimizer_state_like(p, entries, self.cuda)
        self.normalization = PixelNormalization(**state["normalization"])
        self.step, self.wall_time, self.last_loss = state["step"], state["wall_time_s"], state["last_loss"]
        return True


STATE_TENSORS = re.compile(r"state-(\d{8,})\.safetensors")  # the tensors of a training state


def noise_buckets(losses: torch.Tensor, noise_var: torch.Tensor,
                  buckets: int = NOISE_BUCKETS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image losses [B] summed by bucket of their noise variance [B] (1 - abar of q(x_t | x0),
    Ho et al. 2020, Eq. 4), in ``buckets`` equal-width bins of [0, 1]: (sums [K], counts [K]),
    float32 on the losses' device. The bucket means, weighted by the counts, average to the mean
    loss."""
    index = (noise_var.float() * buckets).long().clamp(0, buckets - 1)  # [B]
    sums = torch.zeros(buckets, device=losses.device).index_add_(0, index, losses.float())
    ones = torch.ones_like(losses, dtype=torch.float32)
    counts = torch.zeros(buckets, device=losses.device).index_add_(0, index, ones)
    return sums, counts


def _state_tensors_name(out: Path, state: dict[str, Any] | None = None) -> str | None:
    """The tensors file that the manifest ``state.json`` of ``out`` names (``state``: the manifest,
    already read); ``state.safetensors`` for a manifest of the earlier format, which named none;
    None without a readable manifest. A name other than ``state-STEP.safetensors`` is refused."""
    if state is None:
        try:
            state = json.loads((out / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    if not isinstance(state, dict):
        return None
    name = state.get("tensors", "state.safetensors")
    if not isinstance(name, str) or (name != "state.safetensors" and not STATE_TENSORS.fullmatch(name)):
        raise CheckpointError(f"{out / 'state.json'} names {str(name)[:80]!r}, not a training state's tensors file")
    return name


def remove_unlisted_states(out: Path, keep: str | None) -> list[Path]:
    """Delete the ``state-STEP.safetensors`` files in ``out`` other than ``keep`` (the manifest's):
    earlier states, and the tensors of a save killed before its manifest was written."""
    removed = []
    for p in out.glob("state-*.safetensors"):
        if STATE_TENSORS.fullmatch(p.name) and p.name != keep:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def truncate_log(path: Path, step: int) -> None:
    """Keep the records of the JSON-lines log ``path`` up to ``step`` (and drop lines that are
    not records, such as one cut by a kill), rewritten atomically; nothing if already so."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if kept != lines:
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())


def _same_experiment(recorded: Any, experiment: ExperimentConfig) -> bool:
    """Whether a training state's recorded experiment is ``experiment``, read as a config (so a key
    added since with its default, such as network.kind, changes nothing)."""
    try:
        recorded = ExperimentConfig.from_dict(recorded, "training state")
    except (ConfigError, TypeError, ValueError, AttributeError):
        return False
    return json.dumps(recorded.to_dict()) == json.dumps(experiment.to_dict())


def optimizer_state_like(param: torch.Tensor, entries: dict[str, torch.Tensor], cuda: bool) -> dict[str, torch.Tensor]:
    """One parameter's AdamW state as read from disk, laid out as the parameter is. Safetensors
    stores every tensor contiguous, while on CUDA the parameters are channels_last, and the fused
    AdamW refuses moments whose layout differs from their parameter's ("params, grads, exp_avgs,
    and exp_avg_sqs must have same dtype, device, and layout"): copied into ``empty_like(param)``
    they keep their values and take the parameter's strides. ``step`` goes to the device the
    fused optimizer keeps it on (CPU otherwise)."""
    out = {}
    for k, v in entries.items():
        if k == "step":
            out[k] = v.to(param.device if cuda else "cpu")
        elif v.shape == param.shape:
            out[k] = torch.empty_like(param, dtype=v.dtype).copy_(v)
        else:
            out[k] = v
    return out


def check_split(batch_size: int, world_size: int, items_per_epoch: int) -> None:
    """Refuse a run whose global batch cannot be shared equally by ``world_size`` processes (rank r
    takes rows r::world of each batch, and DDP averages the ranks' mean losses with equal weights,
    which is the batch's mean loss only when every rank holds as many rows)."""
    if world_size <= 1:
        return
    if batch_size % world_size:
        raise ValueError(f"train.batch_size {batch_size} does not split over {world_size} processes: "
                         f"use a multiple of {world_size}")
    if items_per_epoch < batch_size:
        raise ValueError(f"{items_per_epoch} training items per epoch are fewer than train.batch_size {batch_size}: "
                         f"under {world_size} processes every step needs a whole batch (lower --batch-size or add images)")


def with_sync_batchnorm(network: torch.nn.Module, device_type: str, world_size: int) -> torch.nn.Module:
    """The network with its BatchNorm layers as ``SyncBatchNorm`` (statistics over the global
    batch, all ranks), for DDP on CUDA. The parameters and buffers are the same tensors and the
    state-dict keys unchanged, so checkpoints and resume states stay those of the plain network.
    One process: unchanged (its BatchNorm already sees the whole batch). Not CUDA: refused, as
    PyTorch's SyncBatchNorm runs on GPUs only."""
    if world_size <= 1:
        print("sync_batchnorm: one process, BatchNorm already sees the whole batch; nothing to do")
        return network
    if device_type != "cuda":
        raise ValueError(f"sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no {device_type} kernels); "
                         f"drop --sync-batchnorm for this {device_type} run")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def resolve_device(name: str | None) -> str:
    """"auto" (or None) picks CUDA, then Apple MPS, then CPU."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available")
    return name
