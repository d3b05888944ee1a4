"""Training over several processes (torchrun / DDP), here 2 and 3 CPU processes with the gloo backend.

A one-process reference reproduces what DDP computes: each rank's rows of the global batch
(rows r::world) with that rank's noise draws, the gradients of the ranks' mean losses averaged,
and the BatchNorm running statistics of rank 0 (DDP broadcasts rank 0's buffers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.training import RunOptions, Trainer, _step_seed, check_split, with_sync_batchnorm  # noqa: E402
from tests.helpers import random_images, tiny_experiment  # noqa: E402

# per world size: (augmentation, global batch); 10 images leave a ragged last batch every epoch
# (flip: 10 items, batch 4 -> 2 steps and 2 items dropped; flip_x2: 20 items, batch 6 -> 3 steps, 2 dropped)
CASES = {2: ("flip", 4), 3: ("flip_x2", 6)}
IMAGES, EPOCHS, STOP_AT = 10, 2, 3



def state_file(run: Path) -> Path:
    """The training-state tensors file that a run folder's manifest (state.json) names."""
    return run / json.loads((run / "state.json").read_text())["tensors"]


def _experiment(world: int):
    augment, batch = CASES[world]
    return tiny_experiment(epochs=EPOCHS, batch_size=batch).with_overrides(data={"augment": augment})


def _state(trainer: Trainer) -> dict:
    tensors = {f"model.{k}": v for k, v in trainer.network.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in tensors.items()}


def _worker(rank: int, world: int, tmp: str) -> None:
    """Three runs in one process group: uninterrupted, stopped at STOP_AT, and resumed from there."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        exp, images = _experiment(world), random_images(IMAGES, 16, seed=5)
        for name, max_steps in (("whole", None), ("stopped", STOP_AT), ("stopped", None)):
            trainer = Trainer(exp, images, Path(tmp) / name,
                              RunOptions(progress=False, rank=rank, world_size=world, log_every=1, max_steps=max_steps))
            resumed = trainer.resume()
            summary = trainer.run()
        save_file(_state(trainer), f"{tmp}/resumed_rank{rank}.safetensors")
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"steps": summary["steps"], "resumed": resumed}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=sorted(CASES), ids=lambda w: f"{w}proc")
def ddp_run(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp(f"ddp{world}")
    mp.spawn(_worker, args=(world, str(tmp)), nprocs=world, join=True)
    return world, tmp


def _reference(world: int, out: Path) -> tuple[dict, list[float]]:
    """One process computing the DDP step of ``world`` ranks: Trainer.train_step with its loss
    replaced by the ranks' losses, each on the rank's rows and draws, their gradients averaged; returns the final
    state and rank 0's loss of every step (what rank 0 logs)."""
    exp = _experiment(world)
    trainer = Trainer(exp, random_images(IMAGES, 16, seed=5), out, RunOptions(progress=False))
    rank0_losses = []

    def ranks_mean_loss(*_draws_of_rank_0):
        step, buffers = trainer.step, dict(trainer.network.named_buffers())
        before = {k: v.clone() for k, v in buffers.items()}
        total, kept = 0.0, None
        trainer.world = world
        for rank in range(world):
            with torch.no_grad():  # each rank starts the step from rank 0's broadcast statistics
                for k, v in buffers.items():
                    v.copy_(before[k])
            trainer.rank = rank
            trainer.gen.manual_seed(_step_seed(exp.train.seed, step, rank))
            draws = trainer._draws(step)
            loss = trainer._loss_of(*draws).mean()  # the rank's step loss: the mean of its images' losses
            (loss / world).backward()  # the gradients add up rank by rank: their mean, as DDP's all-reduce
            total += loss.item() / world
            if rank == 0:
                kept = {k: v.clone() for k, v in buffers.items()}
                rank0_losses.append(loss.item())
        with torch.no_grad():  # rank 0's running statistics are the ones that survive
            for k, v in buffers.items():
                v.copy_(kept[k])
        trainer.rank, trainer.world = 0, 1
        # per image, as _loss_of gives it; train_step's backward of their mean changes no gradient
        return torch.full((len(_draws_of_rank_0[0]),), total, requires_grad=True)

    trainer.loss_of = ranks_mean_loss
    while not trainer.finished:
        trainer.train_step()
    return _state(trainer), rank0_losses


@pytest.mark.slow
def test_ddp_matches_the_one_process_reference(ddp_run, tmp_path):
    world, tmp = ddp_run
    whole = load_file(str(state_file(tmp / "whole")))
    reference, rank0_losses = _reference(world, tmp_path)
    steps = EPOCHS * (IMAGES * (2 if CASES[world][0] == "flip_x2" else 1) // CASES[world][1])
    assert len(rank0_losses) == steps and whole["optim.0.step"].item() == steps  # the ragged batch is dropped
    assert set(reference) <= set(whole)
    for k, v in reference.items():
        torch.testing.assert_close(whole[k], v, rtol=0, atol=2e-5, msg=lambda m: f"{k}: {m}")
    # the logged loss is rank 0's own (its rows, its draws), one line per step
    logged = [json.loads(line)["loss"] for line in (tmp / "whole" / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(rank0_losses, rel=1e-5)


@pytest.mark.slow
def test_ddp_resume_is_bitwise_and_ranks_agree(ddp_run):
    world, tmp = ddp_run
    whole = load_file(str(state_file(tmp / "whole")))
    resumed = load_file(str(state_file(tmp / "stopped")))
    assert set(whole) == set(resumed)
    for k in whole:  # stopped at step 3, resumed: the uninterrupted run
        if world == 2:  # bit for bit: an all-reduce of two ranks adds a + b whatever the order
            assert torch.equal(whole[k], resumed[k]), k
        else:  # three ranks: gloo's sum depends on a gradient's place in DDP's bucket, and a new DDP
            # lays its buckets out by parameter order for its first step, then by the order the
            # gradients arrived: the first step after a resume rounds differently (measured: 3e-8)
            torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")
    for rank in range(world):
        facts = json.loads((tmp / f"rank{rank}.json").read_text())
        assert facts["resumed"] and facts["steps"] == whole["optim.0.step"].item()
        mine = load_file(str(tmp / f"resumed_rank{rank}.safetensors"))
        for k, v in mine.items():  # every rank holds rank 0's weights; BatchNorm statistics are each rank's own
            if "running" not in k:
                assert torch.equal(v, resumed[k]), (rank, k)
    # rank 0 alone writes: one log line per step, the first run's and the stopped run's two calls
    assert len((tmp / "stopped" / "log.jsonl").read_text().splitlines()) == whole["optim.0.step"].item()


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    exp = tiny_experiment(batch_size=4)
    with pytest.raises(ValueError, match=r"^train.batch_size 4 does not split over 3 processes: use a multiple of 3$"):
        Trainer(exp, random_images(8, 16), tmp_path, RunOptions(progress=False, rank=0, world_size=3))
    with pytest.raises(ValueError, match=r"^6 training items per epoch are fewer than train.batch_size 8"):
        check_split(8, 2, 6)
    check_split(8, 2, 8)
    check_split(5, 1, 2)  # one process: a batch larger than the data set is the data set


def test_sync_batchnorm_converts_on_cuda_only(tmp_path, capsys):
    exp = tiny_experiment()
    net = Trainer(exp, random_images(8, 16), tmp_path, RunOptions(progress=False)).network
    params, keys = list(net.parameters()), list(net.state_dict())
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    synced = with_sync_batchnorm(net, "cuda", 2)  # conversion needs no GPU; running it does
    assert norms > 0 and sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == norms
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in synced.modules())
    assert all(a is b for a, b in zip(synced.parameters(), params)) and list(synced.state_dict()) == keys
    assert with_sync_batchnorm(net, "cuda", 1) is net and "one process" in capsys.readouterr().out
    with pytest.raises(ValueError, match="^sync_batchnorm needs CUDA devices .* drop --sync-batchnorm for this cpu run$"):
        Trainer(exp, random_images(8, 16), tmp_path, RunOptions(progress=False, world_size=2, sync_batchnorm=True))


def test_sync_batchnorm_flag_reaches_the_trainer(tmp_path, capsys):
    """`train --sync-batchnorm` in one process trains, saying the flag changes nothing there."""
    from diffusion_core.cli import main
    from tests.test_cli import tiny_training_inputs

    data, cfg = tiny_training_inputs(tmp_path, images=8, epochs=1, every=0)
    assert main(["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet",
                 "--max-steps", "1", "--sync-batchnorm", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "sync_batchnorm: one process, BatchNorm already sees the whole batch; nothing to do" in out
    assert "stopped at step 1" in out


def test_single_process_keeps_its_random_stream():
    """rank 0 of a one-process run draws exactly what the run drew before DDP existed."""
    assert _step_seed(3, 10) == _step_seed(3, 10, 0) == (3 * 1_000_003 + 10 * 7919 + 17)
    assert _step_seed(3, 10, 1) != _step_seed(3, 10, 0)


def _cli_inputs(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    data = tmp_path / "imgs"
    data.mkdir()
    for i, img in enumerate(random_images(16, 32)):
        Image.fromarray(img).save(data / f"{i}.png")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[network]\nwidths = [8, 16]\nblock_depth = 1\nimage_size = 16\n[train]\nepochs = 2\nbatch_size = 4\n")
    return cfg, data


def _train(tmp_path: Path, launcher: list[str], out: str) -> subprocess.CompletedProcess:
    cfg, data = (tmp_path / "tiny.toml", tmp_path / "imgs")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, *launcher, "-m", "diffusion_core", "train", str(cfg), "--data", str(data),
                        "--out", str(tmp_path / out), "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    # on failure, the first lines of stderr (a rank's own error) as well as the launcher's summary
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    return r


# --standalone: a rendezvous on a free local port, so a busy default port (29500) on a shared CI
# machine cannot make the test fail; the CLI sees the same environment as under plain torchrun
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc_per_node 2 -m diffusion_core train ...` trains one model on CPU (gloo)."""
    _cli_inputs(tmp_path)
    r = _train(tmp_path, [*TORCHRUN, "2"], "run")
    assert r.stdout.count("2 process(es)") == 1  # rank 0 alone reports
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["training"]["steps"] == 8 and desc["training"]["images_seen"] == 32


@pytest.mark.slow
def test_torchrun_with_one_process_is_the_plain_command(tmp_path):
    """`torchrun --nproc_per_node 1` trains bit for bit the weights of the plain command."""
    _cli_inputs(tmp_path)
    _train(tmp_path, [], "plain")
    _train(tmp_path, [*TORCHRUN, "1"], "torchrun")
    plain, launched = (load_file(str(state_file(tmp_path / d))) for d in ("plain", "torchrun"))
    assert set(plain) == set(launched) and len(plain) > 10
    assert all(torch.equal(plain[k], launched[k]) for k in plain)
    plain, launched = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "torchrun"))
    assert set(plain) == set(launched) and all(torch.equal(plain[k], launched[k]) for k in plain)


def test_scaling_efficiency_is_against_the_smallest_count():
    from bench.ddp_scaling import scaling, table

    rows = scaling([{"gpus": 1, "global_batch": 64, "images_per_s": 1000.0},
                    {"gpus": 2, "global_batch": 128, "images_per_s": 1900.0},
                    {"gpus": 4, "global_batch": 256, "images_per_s": 3400.0},
                    {"gpus": 8, "error": "only 4 GPU(s) here"}])
    assert [r.get("efficiency") for r in rows] == [1.0, 0.95, 0.85, None]
    assert rows[2]["speedup"] == 3.4
    text = table(rows).splitlines()
    assert text[3] == "| 2 | 128 | 1,900 | 950 | 1.90x | 95% |" and text[5] == "| 8 | | only 4 GPU(s) here | | | |"
    # without one GPU, the smallest count is the base: 4 -> 8 at 1.8x is 90%
    rows = scaling([{"gpus": 4, "images_per_s": 100.0}, {"gpus": 8, "images_per_s": 180.0}])
    assert rows[1]["efficiency"] == pytest.approx(0.9)


@pytest.mark.slow
def test_ddp_scaling_bench_runs_on_the_cpu(tmp_path):
    """`python -m bench.ddp_scaling --gpus 1 --device cpu`: one torchrun launch, one row, its JSON."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[network]\nwidths = [8, 16]\nblock_depth = 1\nimage_size = 16\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "bench.ddp_scaling", "--gpus", "1", "--per-gpu-batch", "2",
                        "--config", str(cfg), "--device", "cpu", "--warmup", "1", "--steps", "2", "--windows", "1",
                        "--json", str(tmp_path / "out.json")], capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    (row,) = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert row["gpus"] == 1 and row["global_batch"] == 2 and row["images_per_s"] > 0 and row["efficiency"] == 1.0
    assert row["network"]["widths"] == [8, 16] and row["compiled"] is False
    assert "| 1 | 2 |" in r.stdout and "100% |" in r.stdout
