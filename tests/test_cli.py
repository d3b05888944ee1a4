import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_core.cli import build_parser, main
from tests.helpers import make_tiny_checkpoint, random_images

COMMANDS = ["train", "sample", "interpolate", "invert", "export", "evaluate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_flag(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
            assert action.option_strings[-1] in out


@pytest.mark.slow
def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "diffusion_core", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "interpolate" in r.stdout


def tiny_training_inputs(tmp_path, images: int, epochs: int, every: int):
    """An image folder of random PNGs and the TOML of a tiny 16px experiment."""
    data = tmp_path / "imgs"
    data.mkdir()
    for i, img in enumerate(random_images(images, 32)):
        Image.fromarray(img).save(data / f"{i}.png")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[network]\nwidths = [8, 16]\nblock_depth = 1\nimage_size = 16\n'
                   f'[train]\nepochs = {epochs}\nbatch_size = 4\nsample_every = {every}\ncheckpoint_every = {every}\n')
    return data, cfg


@pytest.mark.slow
def test_train_then_use_the_model(tmp_path, capsys):
    data, cfg = tiny_training_inputs(tmp_path, images=10, epochs=2, every=1)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--data", str(data), "--out", str(run), "--device", "cpu", "--quiet",
                 "--max-steps", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "not finished" in capsys.readouterr().out
    assert main(["train", str(cfg), "--data", str(data), "--out", str(run), "--device", "cpu", "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "finished" in out
    assert main(["export", str(run), str(tmp_path / "ck" / "tiny")]) == 0
    ck = str(tmp_path / "ck" / "tiny.json")
    assert main(["sample", ck, "--seeds", "0-3", "--steps", "4", "--out", str(tmp_path / "g.png"),
                 "--device", "cpu"]) == 0
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18, 3)  # 2x2 grid of 16 px with 2 px padding
    assert main(["interpolate", ck, "--seeds", "1", "2", "--frames", "5", "--steps", "3",
                 "--out", str(tmp_path / "i.gif"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "i.gif").n_frames == 5
    assert main(["invert", ck, str(data / "0.png"), "--steps", "5", "--out", str(tmp_path / "inv"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "inv.safetensors").exists() and (tmp_path / "inv.png").exists()


def test_user_errors_are_messages(tmp_path, capsys):
    ck = make_tiny_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as e:  # argparse's own refusal, before anything is loaded
        main(["sample", str(ck), "--steps", "0", "--device", "cpu"])
    assert e.value.code == 2 and "argument --steps: 0 is out of range" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing.json"), "--device", "cpu"]) == 2
    assert "no checkpoint description" in capsys.readouterr().err
    assert main(["invert", str(ck), str(tmp_path / "nope.png"), "--device", "cpu"]) == 2
    assert "no image" in capsys.readouterr().err
    (tmp_path / "notimage.png").write_text("hello")
    assert main(["invert", str(ck), str(tmp_path / "notimage.png"), "--device", "cpu"]) == 2
    assert "not a readable image" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "experiments/ddim_01.toml", "--data", str(empty), "--out", str(tmp_path / "r"),
                 "--device", "cpu"]) == 2
    assert str(empty) in capsys.readouterr().err
    assert main(["sample", str(ck), "--seeds", "5-2", "--device", "cpu"]) == 2
    assert "seed range '5-2'" in capsys.readouterr().err


def test_train_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    """--compile-mode implies --compile and hands its mode to torch.compile (recorded here instead
    of compiled: Inductor's C++ builds take minutes on a CPU)."""
    import torch

    seen = []

    def fake_compile(fn, mode=None, **kwargs):
        seen.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    data, cfg = tiny_training_inputs(tmp_path, images=8, epochs=1, every=0)
    assert main(["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--quiet", "--max-steps", "1", "--compile-mode", "reduce-overhead",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert seen == ["reduce-overhead"]


def test_compile_defaults():
    """Compiled with CUDA graphs by default on one CUDA process, plain compile under DDP, nothing
    on the CPU unless asked; naming a mode implies compiling; --no-compile wins."""
    from diffusion_core.training import compile_settings

    assert compile_settings("cuda") == (True, "reduce-overhead")
    assert compile_settings("cuda:1") == (True, "reduce-overhead")
    assert compile_settings("cuda", world_size=4) == (True, "default")
    assert compile_settings("cpu") == (False, None)
    assert compile_settings("mps") == (False, None)
    assert compile_settings("cpu", compile=True) == (True, "default")
    assert compile_settings("cpu", mode="max-autotune") == (True, "max-autotune")
    assert compile_settings("cuda", compile=False) == (False, None)
    assert compile_settings("cuda", mode="default") == (True, "default")
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_settings("cuda", mode="fastest")


def test_train_no_compile_on_cpu_by_default(tmp_path, monkeypatch):
    """Without --compile, a CPU run never calls torch.compile; --compile calls it in default mode."""
    import torch

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: seen.append(mode) or fn)
    data, cfg = tiny_training_inputs(tmp_path, images=8, epochs=1, every=0)
    common = ["--data", str(data), "--device", "cpu", "--quiet", "--max-steps", "1",
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", str(cfg), "--out", str(tmp_path / "a"), *common]) == 0
    assert seen == []
    assert main(["train", str(cfg), "--out", str(tmp_path / "b"), "--compile", *common]) == 0
    assert seen == ["default"]


def test_evaluate_builds_typed_options(monkeypatch, capsys):
    """evaluate hands the core one EvaluationOptions record (no argparse namespace), with the
    protocol's equal-N splits; the printed lines are the core's result."""
    from diffusion_core import evaluation
    from diffusion_core.model import AUTO
    from diffusion_core.samplers import SamplerConfig

    seen = []
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", lambda options: seen.append(options) or {"fid": 12.5})
    assert main(["evaluate", "m.json", "--data", "imgs", "--num-samples", "64", "--steps", "20", "--eta", "0.5",
                 "--batch-size", "32", "--device", "cpu", "--memorization", "--no-write", "--fp32",
                 "--no-compile"]) == 0
    assert capsys.readouterr().out == "fid: 12.5\n"
    assert seen == [evaluation.EvaluationOptions(
        checkpoint="m.json", data="imgs", sampler=SamplerConfig("ddim", 20, 0.5, False), num_samples=64,
        feature_batch=32, device="cpu", fid_weights=None, cache_dir=".cache/fid", memorization=True, write=False,
        autocast=None, compile=False, equal_n_splits=3)]
    main(["evaluate", "m.json", "--data", "imgs"])
    assert seen[-1].autocast == AUTO and seen[-1].write and seen[-1].num_samples == 2911 and seen[-1].compile is None
