import dataclasses
import json

import numpy as np
import pytest
import torch

from diffusion_core import diffusion as D
from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.model import Denoiser
from diffusion_core.training import RunOptions, Trainer
from tests.helpers import random_images, tiny_experiment


def _x0_error(trainer: Trainer, images: np.ndarray, noise: float = 0.6) -> float:
    """Mean squared error of the EMA denoiser's x0 estimate on the training images at one level."""
    den = Denoiser(trainer.ema, "eps", trainer.normalization)
    x0 = trainer.normalization.to_model(torch.from_numpy(images).permute(0, 3, 1, 2))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    signal = (1 - noise**2) ** 0.5
    _, x0_hat = den(D.q_sample(x0, signal, noise, eps), signal, noise)
    return float(((x0_hat - x0) ** 2).mean())


@pytest.mark.slow
def test_tiny_unet_overfits_a_few_images(tmp_path):
    images = random_images(4, 16, seed=1)
    exp = tiny_experiment(widths=(16, 32), block_depth=1, epochs=400, batch_size=4, learning_rate=3e-3,
                          loss="l2", ema_decay=0.9)
    trainer = Trainer(exp, images, tmp_path, RunOptions(progress=False, log_every=50))
    before = _x0_error(trainer, images)
    trainer.run()
    after = _x0_error(trainer, images)
    # at sigma = 0.6 the best guess without a model (x0_hat = x_t / alpha) has error ~0.56;
    # a model that has learnt these 4 images recovers them far better
    assert after < 0.25 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert {"step", "epoch", "loss", "images_per_s", "lr"} <= set(log[0])


@pytest.mark.slow
def test_resume_is_bitwise_identical(tmp_path):
    images = random_images(12, 16, seed=2)
    exp = tiny_experiment(epochs=3, batch_size=4, checkpoint_every=1)
    exp = exp.with_overrides(data={"augment": "flip_x2"})
    whole = Trainer(exp, images, tmp_path / "whole", RunOptions(progress=False))
    whole.run()
    part = Trainer(exp, images, tmp_path / "split", RunOptions(progress=False, max_steps=7))  # mid-epoch
    part.run()
    assert not part.finished
    resumed = Trainer(exp, images, tmp_path / "split", RunOptions(progress=False))
    assert resumed.resume() and resumed.step == 7
    resumed.run()
    assert resumed.step == whole.step == 18  # 3 epochs x (2 x 12 items / 4)
    for a, b in [(whole.network, resumed.network), (whole.ema, resumed.ema)]:
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    sa = whole.optimizer.state_dict()["state"]
    sb = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # an interrupted-then-resumed run also differs from a run with another seed (the check can fail)
    other = Trainer(exp.with_overrides(train={"seed": 1}), images, tmp_path / "other", RunOptions(progress=False))
    other.run()
    assert not torch.equal(other.network.head.weight, whole.network.head.weight)


def test_outputs_and_model_description(tmp_path):
    images = random_images(8, 16, seed=3)
    exp = tiny_experiment(epochs=2, batch_size=4, sample_every=1)
    Trainer(exp, images, tmp_path, RunOptions(progress=False, sample_count=4),
            dataset={"name": "synthetic"}).run()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    model = load_checkpoint(tmp_path / "model.json")
    t = model.description["training"]
    assert t["images_seen"] == 4 * 4 and t["steps"] == 4 and t["dataset"] == {"name": "synthetic", "size": 8}
    assert t["finished"] and t["device"] == "cpu" and np.isfinite(t["final_loss"])
    # dataset normalisation: per-channel statistics of the training images
    assert model.normalization.mean[0] == pytest.approx(images[..., 0].mean() / 255, rel=1e-6)


def test_resume_refuses_another_config(tmp_path):
    images = random_images(8, 16)
    Trainer(tiny_experiment(epochs=1, batch_size=4), images, tmp_path, RunOptions(progress=False)).run()
    other = Trainer(tiny_experiment(epochs=1, batch_size=4, learning_rate=0.01), images, tmp_path,
                    RunOptions(progress=False))
    with pytest.raises(ValueError, match="different configuration"):
        other.resume()


def test_wrong_image_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        Trainer(tiny_experiment(), random_images(4, 32), tmp_path)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_its_recurrence_with_warmup(tmp_path, warmup):
    """EMA after each step equals d_t * ema + (1 - d_t) * weights with d_t = min(0.999, (1+t)/(10+t))
    (warm-up) or 0.999 (without), starting from the initial weights."""
    exp = tiny_experiment(epochs=2, batch_size=4, ema_decay=0.999)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, ema_warmup=warmup))
    trainer = Trainer(exp, random_images(8, 16, seed=5), tmp_path, RunOptions(progress=False))
    name = "stem.weight"
    expected = dict(trainer.network.named_parameters())[name].detach().clone().double()
    for t in range(4):
        trainer.train_step()
        d = min(0.999, (1 + t) / (10 + t)) if warmup else 0.999
        assert trainer.ema_decay_at(t) == pytest.approx(d)
        weights = dict(trainer.network.named_parameters())[name].detach().double()
        expected = d * expected + (1 - d) * weights
        ema = dict(trainer.ema.named_parameters())[name].detach().double()
        assert torch.allclose(ema, expected, atol=1e-6), t
    assert trainer.ema_decay_at(10**6) == pytest.approx(0.999)


def test_calibrated_ema_batchnorm_statistics(tmp_path):
    """The exported EMA network's BatchNorm statistics are those of its own activations on
    training batches (re-estimated), and the training EMA itself is left untouched."""
    from diffusion_core.training import CALIBRATION_BATCHES, _step_seed
    from diffusion_core.unet import sinusoidal_embedding

    images = random_images(8, 16, seed=4)
    exp = tiny_experiment(epochs=2, batch_size=4, ema_decay=0.5)
    trainer = Trainer(exp, images, tmp_path, RunOptions(progress=False))
    trainer.run()
    before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    cal = trainer.calibrated_ema()
    assert all(torch.equal(before[k], v) for k, v in trainer.ema.state_dict().items())
    # replay the calibration batches and measure the first BatchNorm's input directly
    g = torch.Generator().manual_seed(_step_seed(exp.train.seed, -(10**6)))
    means = []
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            idx = torch.randint(0, len(images), (4,), generator=g)
            x0 = trainer.normalization.to_model(trainer.images[idx])
            signal, noise = trainer.levels.draw(4, g)
            eps = torch.randn(x0.shape, generator=g)
            x_t = D.q_sample(x0, signal[:, None, None, None], noise[:, None, None, None], eps)
            e = sinusoidal_embedding(noise**2, 32, 1.0, 1000.0)[:, :, None, None].expand(4, 32, 16, 16)
            h = torch.cat([trainer.ema.stem(x_t), e], dim=1)
            means.append(h.mean(dim=(0, 2, 3)))
    first_bn = cal.down[0][0].norm
    assert torch.allclose(first_bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert not torch.allclose(first_bn.running_mean, trainer.ema.down[0][0].norm.running_mean, atol=1e-3)
    # the saved model carries the calibrated statistics
    saved = load_checkpoint(tmp_path / "model.json").network
    assert torch.equal(saved.down[0][0].norm.running_mean, first_bn.running_mean)


def _steps(trainer: Trainer, n: int) -> list[float]:
    return [float(trainer.train_step()) for _ in range(n)]


@pytest.mark.slow
def test_compiled_step_is_the_whole_loss_and_matches_eager(tmp_path, monkeypatch):
    """One process compiles the whole loss (data preparation, noise, network, loss) as one graph,
    not the network alone; compiled (aot_eager here: Inductor's C++ builds take minutes on a CPU)
    it gives the eager step's losses and weights, flips included."""
    compiled = []
    real_compile = torch.compile

    def recording_compile(fn, mode=None, **kwargs):
        compiled.append((getattr(fn, "__name__", type(fn).__name__), mode))
        return real_compile(fn, backend="aot_eager")

    images = random_images(16, 16, seed=3)
    exp = tiny_experiment(widths=(8, 16), block_depth=1, batch_size=4, epochs=2)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, augment="flip"))
    eager = Trainer(exp, images, tmp_path / "eager", RunOptions(progress=False))
    monkeypatch.setattr(torch, "compile", recording_compile)
    fast = Trainer(exp, images, tmp_path / "fast", RunOptions(progress=False, compile=True, compile_mode="default"))
    assert compiled == [("_loss_of", "default")]
    assert fast.forward is fast.network  # the network itself runs inside the compiled loss
    np.testing.assert_allclose(_steps(fast, 6), _steps(eager, 6), rtol=1e-5, atol=1e-6)
    for a, b in zip(fast.network.parameters(), eager.network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_returned_loss_owns_its_memory(tmp_path):
    """With CUDA graphs the compiled loss is a buffer that the next replay overwrites; run() keeps
    losses across steps (a logging window's sum), so train_step hands back a copy, never the
    loss function's own output tensor."""
    images = random_images(16, 16, seed=3)
    exp = tiny_experiment(widths=(8, 16), block_depth=1, batch_size=4, epochs=2)
    trainer = Trainer(exp, images, tmp_path, RunOptions(progress=False))
    outputs = []
    inner = trainer.loss_of

    def recording(*args):
        outputs.append(inner(*args))
        return outputs[-1]

    trainer.loss_of = recording
    first = trainer.train_step()
    assert first.data_ptr() != outputs[0].data_ptr()
    value = float(first)
    outputs[0].detach().zero_()  # what a graph replay does to its output buffer
    assert float(first) == value != 0.0
    assert not first.requires_grad


def test_a_compiled_step_that_fails_falls_back_to_eager_with_the_same_draws(tmp_path, monkeypatch, capsys):
    """torch.compile fails lazily, at the first call: the step reruns eagerly on the same random
    draws, so the run's numbers are those of an eager run."""
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: broken)
    images = random_images(16, 16, seed=3)
    exp = tiny_experiment(widths=(8, 16), block_depth=1, batch_size=4, epochs=2)
    fast = Trainer(exp, images, tmp_path / "fast", RunOptions(progress=False, compile=True))
    eager = Trainer(exp, images, tmp_path / "eager", RunOptions(progress=False))
    assert _steps(fast, 3) == _steps(eager, 3)
    assert "compiled training step failed (RuntimeError: no C++ compiler); training eagerly" in capsys.readouterr().out
    assert fast.loss_of == fast._loss_of


def test_resumed_optimizer_state_takes_the_parameters_layout():
    """On CUDA the parameters are channels_last but safetensors gives contiguous moments, which the
    fused AdamW refused on resume; the state is laid out like its parameter, values unchanged."""
    from diffusion_core.training import optimizer_state_like

    param = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    moment = torch.randn(8, 4, 3, 3)  # contiguous, as read from disk
    state = optimizer_state_like(param, {"exp_avg": moment, "exp_avg_sq": moment.abs(), "step": torch.tensor(5.0)},
                                 cuda=False)
    assert state["exp_avg"].stride() == param.stride() != moment.stride()
    assert torch.equal(state["exp_avg"], moment) and torch.equal(state["exp_avg_sq"], moment.abs())
    assert state["step"].device.type == "cpu" and state["step"].item() == 5.0
    # and a fused AdamW steps from it (on CUDA that is where the contiguous moments were refused)
    opt_param = torch.nn.Parameter(param.clone())
    opt = torch.optim.AdamW([opt_param], lr=1e-3, fused=True)
    opt_param.grad = torch.ones_like(opt_param)
    opt.state[opt_param] = optimizer_state_like(opt_param, {"exp_avg": moment, "exp_avg_sq": moment.abs(),
                                                            "step": torch.tensor(5.0)}, cuda=False)
    opt.step()
    assert opt.state[opt_param]["step"].item() == 6.0


def test_noise_buckets_sum_losses_by_equal_width_bins_of_the_noise_variance():
    from diffusion_core.training import noise_buckets

    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    var = torch.tensor([0.0, 0.19, 0.2, 0.999, 1.0])  # 1.0 belongs to the last bin, not a sixth
    sums, counts = noise_buckets(losses, var, buckets=5)
    assert sums.tolist() == [3.0, 3.0, 0.0, 0.0, 14.0] and counts.tolist() == [2.0, 1.0, 0.0, 0.0, 2.0]


def test_log_buckets_average_to_the_logged_loss_weighted_by_counts(tmp_path):
    """Each log record's loss by noise level, weighted by the images of each bucket, is the record's
    loss (every image of the window in exactly one bucket); empty buckets are null."""
    from diffusion_core.training import NOISE_BUCKETS

    exp = tiny_experiment(widths=(8, 16), block_depth=1, batch_size=4, epochs=2)
    trainer = Trainer(exp, random_images(12, 16, seed=6), tmp_path, RunOptions(progress=False, log_every=2))
    trainer.run()  # 3 steps an epoch, windows of 2 steps cut at each epoch's end: 2, 1, 2, 1 steps
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 3, 5, 6]
    for record, steps in zip(log, [2, 1, 2, 1]):
        counts, means = record["noise_counts"], record["loss_by_noise"]
        assert len(counts) == len(means) == NOISE_BUCKETS and sum(counts) == 4 * steps
        assert all((m is None) == (c == 0) for m, c in zip(means, counts))
        weighted = sum(m * c for m, c in zip(means, counts) if c) / sum(counts)
        assert weighted == pytest.approx(record["loss"], rel=1e-5)
