"""Every error a user can cause on the command line ends as one line on stderr and exit status 2,
before any long work: out-of-range numbers (named by argparse with their bound), unwritable output
paths, bad seeds, configs, checkpoints and images. Run in-process through ``cli.main``."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from diffusion_core import commands
from diffusion_core.checkpoint import CheckpointError
from diffusion_core.cli import main
from tests.helpers import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("ck")))


@pytest.fixture
def no_model(monkeypatch):
    """Fail if a command gets as far as loading a checkpoint (the error had to come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded a checkpoint before refusing the arguments")
    monkeypatch.setattr(commands, "load_checkpoint", refuse)


def refused_by_argparse(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


# --------------------------------------------------------------------------- bounded numbers


@pytest.mark.parametrize("argv, expected", [
    (["invert", "c", "i.png", "--refine", "-1"], "argument --refine: -1 is out of range: must be from 0 to 100"),
    (["sample", "c", "--steps", "0"], "argument --steps: 0 is out of range: must be from 1 to 100,000"),
    (["sample", "c", "--steps", "2.5"], "argument --steps: '2.5' is not a whole number"),
    (["sample", "c", "--eta", "1.5"], "argument --eta: 1.5 is out of range: must be from 0 to 1"),
    (["sample", "c", "--eta", "nan"], "argument --eta: nan is out of range: must be from 0 to 1"),
    (["sample", "c", "--cols", "0"], "argument --cols: 0 is out of range"),
    (["sample", "c", "--device", "xyz"], "argument --device: 'xyz' is not a device: use cpu, cuda, cuda:N, mps or auto"),
    (["train", "t.toml", "--data", "d", "--out", "o", "--batch-size", "1000000"],
     "argument --batch-size: 1000000 is out of range: must be from 1 to 65,536"),
    (["train", "t.toml", "--data", "d", "--out", "o", "--max-steps", "-1"], "argument --max-steps: -1 is out of range"),
    (["train", "t.toml", "--data", "d", "--out", "o", "--time-limit", "-1"],
     "argument --time-limit: -1 is out of range: must be more than 0 and at most 1e+09"),
    (["train", "t.toml", "--data", "d", "--out", "o", "--time-limit", "inf"], "argument --time-limit: inf is out of range"),
    (["train", "t.toml", "--data", "d", "--out", "o", "--image-size", "7"],
     "argument --image-size: 7 is out of range: must be from 8 to 1,024"),
    (["train", "t.toml", "--data", "d", "--out", "o", "--epochs", "0"], "argument --epochs: 0 is out of range"),
    (["interpolate", "c", "--seeds", "1", "2", "--frames", "1"], "argument --frames: 1 is out of range: must be from 2"),
    (["evaluate", "c", "--data", "d", "--num-samples", "1"], "argument --num-samples: 1 is out of range: must be from 2"),
    (["export", "r", "d", "--shard-mib", "-3"], "argument --shard-mib: -3 is out of range"),
])
def test_numbers_out_of_range_name_the_option_and_bound(argv, expected, capsys):
    assert expected in refused_by_argparse(argv, capsys)


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seeds, expected", [
    (["-3", "5"], "'-3' is not a seed"),  # negative seeds: refused by interpolate as by sample
    ([str(2**70), "1"], "seeds must be from 0 to 2**63 - 1"),
    (["0-20000"], "20001 seeds asked for; at most 10000 seeds per request"),
])
def test_bad_seeds_refused_before_loading(seeds, expected, ck, tmp_path, no_model, capsys):
    for command in ("sample", "interpolate"):
        line = one_line_error([command, ck, "--seeds", *seeds, "--out", str(tmp_path / "x.png")], capsys)
        assert expected in line


# --------------------------------------------------------------------------- output paths


def test_output_that_is_a_folder(tmp_path, ck, no_model, capsys):
    line = one_line_error(["sample", ck, "--out", str(tmp_path)], capsys)
    assert line == f"error: --out {tmp_path} is a folder; name a file in it, e.g. {tmp_path / 'out.png'}"
    (tmp_path / "inv.png").mkdir()
    assert "inv.png is a folder" in one_line_error(["invert", ck, "i.png", "--out", str(tmp_path / "inv")], capsys)


def test_output_under_a_file_or_with_a_wrong_suffix(tmp_path, ck, no_model, capsys):
    (tmp_path / "file").write_text("x")
    line = one_line_error(["sample", ck, "--out", str(tmp_path / "file" / "g.png")], capsys)
    assert line == f"error: --out {tmp_path / 'file' / 'g.png'}: {tmp_path / 'file'} is a file, not a folder"
    assert "--out g.jpg must end in .png" in one_line_error(["sample", ck, "--out", "g.jpg"], capsys)
    assert "must end in .png or .gif" in one_line_error(["interpolate", ck, "--seeds", "1", "2", "--out", "a.mp4"],
                                                        capsys)


def test_train_out_that_is_a_file_refused_before_reading_data(tmp_path, capsys, monkeypatch):
    (tmp_path / "FILE").write_text("x")
    monkeypatch.setattr("diffusion_core.data.load_image_set", lambda *a, **k: pytest.fail("read the data"))
    line = one_line_error(["train", "experiments/ddim_01.toml", "--data", str(tmp_path), "--out",
                           str(tmp_path / "FILE")], capsys)
    assert line == f"error: --out {tmp_path / 'FILE'}: {tmp_path / 'FILE'} is a file, not a folder"


def test_evaluate_into_a_read_only_checkpoint_refused_before_the_work(tmp_path, ck, no_model, capsys, monkeypatch):
    """The results of a long evaluation would be lost when they cannot be recorded: refused first,
    with the way out named (tests may run as root, where every mode bit is writable: the check's
    question to the system is answered here)."""
    description = os.path.abspath(ck if ck.endswith(".json") else ck + ".json")
    monkeypatch.setattr(os, "access", lambda p, mode: os.path.abspath(p) != description)
    line = one_line_error(["evaluate", ck, "--data", str(tmp_path)], capsys)
    assert line.startswith(f"error: {ck}: its results cannot be recorded in ") and line.endswith(
        "(no permission to write there); copy the checkpoint somewhere writable, or pass --no-write to print them only")
    monkeypatch.setattr(commands, "evaluate", lambda args: 0)  # --no-write: nothing to record, so no refusal
    assert main(["evaluate", ck, "--data", str(tmp_path), "--no-write"]) == 0


def test_system_errors_are_one_line_too(tmp_path, ck, capsys):
    long_name = str(tmp_path / ("a" * 300 + ".png"))
    assert one_line_error(["sample", ck, "--out", long_name], capsys) == f"error: File name too long: {long_name}"


# --------------------------------------------------------------------------- training inputs


def test_batch_larger_than_the_data_set_refused_up_front(tmp_path, capsys, monkeypatch):
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (10 * i, 0, 0)).save(data / f"{i}.png")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[network]\nwidths = [8, 16]\nblock_depth = 1\nimage_size = 16\n[train]\nepochs = 1\nbatch_size = 2\n")
    monkeypatch.setattr(commands, "Trainer", lambda *a, **k: pytest.fail("built a trainer"))
    line = one_line_error(["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu",
                           "--batch-size", "4", "--quiet", "--cache-dir", str(tmp_path / "cache")], capsys)
    assert line == (f"error: batch size 4 (train.batch_size or --batch-size) is larger than the 3 training images "
                    f"of {data}; lower it or use more images")


def test_config_errors(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert "does not exist" in one_line_error(["train", str(tmp_path / "no.toml"), "--data", ".", "--out", out],
                                              capsys)
    (tmp_path / "bad.toml").write_text("[train\n")
    assert "is not valid TOML" in one_line_error(["train", str(tmp_path / "bad.toml"), "--data", ".", "--out", out],
                                                 capsys)


# --------------------------------------------------------------------------- untrusted files


def test_checkpoint_errors(tmp_path, ck, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "is not valid JSON" in one_line_error(["sample", str(tmp_path / "deep.json"), "--out",
                                                  str(tmp_path / "x.png")], capsys)
    desc = json.loads(open(ck).read())
    desc["experiment"]["schedule"].update(kind="linear", num_timesteps=1000.5)
    (tmp_path / "float.json").write_text(json.dumps(desc))
    line = one_line_error(["sample", str(tmp_path / "float.json"), "--out", str(tmp_path / "x.png")], capsys)
    assert "num_timesteps must be an integer from 1 to 100000, got 1000.5" in line


def test_invert_refuses_pipes_foreign_formats_and_missing_files(tmp_path, ck, capsys, monkeypatch):
    os.mkfifo(tmp_path / "pipe.png")
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("hung on a FIFO"))
    signal.alarm(10)
    try:
        line = one_line_error(["invert", ck, str(tmp_path / "pipe.png"), "--out", str(tmp_path / "inv")], capsys)
    finally:
        signal.alarm(0)
    assert line == f"error: {tmp_path / 'pipe.png'} is a pipe (FIFO), not a regular file"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.tiff")
    line = one_line_error(["invert", ck, str(tmp_path / "photo.tiff"), "--out", str(tmp_path / "inv"),
                           "--device", "cpu"], capsys)
    assert line == f"error: {tmp_path / 'photo.tiff'}: not a readable image: not a JPEG, PNG or WebP file"
    assert "no image at" in one_line_error(["invert", ck, str(tmp_path / "none.png"), "--out",
                                            str(tmp_path / "inv")], capsys)


# --------------------------------------------------------------------------- bugs keep their traceback


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint description"):
        main(["--debug", "sample", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.png")])


def test_a_bug_is_not_turned_into_a_message(tmp_path, monkeypatch):
    def broken(args):
        raise KeyError("a bug")
    monkeypatch.setattr(commands, "sample", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["sample", "c.json", "--out", str(tmp_path / "x.png")])
