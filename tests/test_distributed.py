"""Training over several processes (torchrun / DDP), here 2 CPU processes with the gloo backend."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _worker(rank: int, world: int, tmp: str) -> None:
    sys.path.insert(0, str(ROOT))
    from diffusion_core.training import RunOptions, Trainer
    from tests.helpers import random_images, tiny_experiment

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        exp = tiny_experiment(epochs=2, batch_size=4)
        trainer = Trainer(exp, random_images(8, 16, seed=5), Path(tmp) / "run",
                          RunOptions(progress=False, rank=rank, world_size=world, log_every=1))
        summary = trainer.run()
        flat = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(
            {"params": flat.tolist()[:200], "sum": float(flat.double().sum()), "steps": summary["steps"]}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # DDP averages gradients: both processes hold the same weights after every step
    assert r0["params"] == r1["params"] and r0["sum"] == r1["sum"]
    assert r0["steps"] == r1["steps"] == 4  # 2 epochs x 8 images / global batch 4
    # only rank 0 writes the model, the state and the log (one line per step)
    assert (tmp_path / "run" / "model.json").exists() and (tmp_path / "run" / "state.json").exists()
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 4


def test_single_process_keeps_its_random_stream():
    """rank 0 of a one-process run draws exactly what the run drew before DDP existed."""
    from diffusion_core.training import _step_seed

    assert _step_seed(3, 10) == _step_seed(3, 10, 0) == (3 * 1_000_003 + 10 * 7919 + 17)
    assert _step_seed(3, 10, 1) != _step_seed(3, 10, 0)


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc_per_node 2 -m diffusion_core train ...` trains one model on CPU (gloo)."""
    import subprocess

    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tests.helpers import random_images

    data = tmp_path / "imgs"
    data.mkdir()
    for i, img in enumerate(random_images(16, 32)):
        Image.fromarray(img).save(data / f"{i}.png")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[network]\nwidths = [8, 16]\nblock_depth = 1\nimage_size = 16\n[train]\nepochs = 2\nbatch_size = 4\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # --standalone: a rendezvous on a free local port, so a busy default port (29500) on a shared CI
    # machine cannot make the test fail; the CLI sees the same environment as under plain torchrun
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "diffusion_core", "train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"),
                        "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    # on failure, the first lines of stderr (a rank's own error) as well as the launcher's summary
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    assert r.stdout.count("2 process(es)") == 1  # rank 0 alone reports
    desc = json.loads((tmp_path / "run" / "model.json").read_text())
    assert desc["training"]["steps"] == 8 and desc["training"]["images_seen"] == 32
