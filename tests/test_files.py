"""The one file writer and the one validator of tensors read from disk (diffusion_core.files), and
every reader that uses the validator: checkpoint weights, the app's header check, training state
and the FID Inception weights."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_core import files
from diffusion_core.checkpoint import CheckpointError, load_checkpoint
from diffusion_core.files import (atomic_save_tensors, atomic_write, atomic_write_bytes, sha256_file, validate_tensors,
                                  write_json)
from tests.helpers import make_tiny_checkpoint, random_images, tiny_experiment


# --- writing ------------------------------------------------------------------------------------
def test_atomic_writes_leave_the_file_and_nothing_else(tmp_path):
    target = tmp_path / "sub" / "x.json"
    write_json(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text().endswith("\n")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == files.FILE_MODE == 0o666 & ~files._read_umask()
    atomic_save_tensors({"w": torch.arange(6.0).view(2, 3).t()}, tmp_path / "t.safetensors", {"format": "f"})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["w"], torch.arange(6.0).view(2, 3).t())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "t.safetensors", "x.json"]


def test_a_failing_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.npz"
    atomic_write(target, lambda f: np.savez(f, a=np.arange(3)))

    def broken(f):
        f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    with np.load(target) as z:
        assert list(z["a"]) == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temporary file left


def test_the_writer_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    atomic_write_bytes(tmp_path / "a", b"x")
    atomic_save_tensors({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    assert events == ["fsync file", "rename", "fsync folder"] * 2


# --- validating ---------------------------------------------------------------------------------
EXPECTED = {"conv.weight": torch.zeros(4, 3, 3, 3), "norm.num_batches_tracked": torch.tensor(0)}


@pytest.mark.parametrize("tensor,message", [
    (torch.zeros(4, 3, 3, 3, dtype=torch.complex64),
     "w.safetensors: tensor conv.weight is complex64; weights must be float16, bfloat16 or float32"),
    (torch.zeros(4, 3, 3, 3, dtype=torch.int32),
     "w.safetensors: tensor conv.weight is int32; weights must be float16, bfloat16 or float32"),
    (torch.zeros(4, 3, 3, 3, dtype=torch.float64),
     "w.safetensors: tensor conv.weight is float64; weights must be float16, bfloat16 or float32"),
    (torch.full((4, 3, 3, 3), float("nan"), dtype=torch.bfloat16), "w.safetensors: tensor conv.weight holds NaN"),
    (torch.zeros(4, 3, 1, 1), r"tensor conv.weight has shape \(4, 3, 1, 1\), the network implies \(4, 3, 3, 3\)"),
])
def test_a_weight_of_the_wrong_kind_is_refused_by_name(tensor, message):
    found = {"conv.weight": tensor, "norm.num_batches_tracked": torch.tensor(7)}
    with pytest.raises(ValueError, match=message):
        validate_tensors(found, EXPECTED, "w.safetensors")


def test_integers_only_where_the_network_holds_them_and_names_checked():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        validate_tensors({"conv.weight": torch.ones(4, 3, 3, 3, dtype=dtype), "norm.num_batches_tracked":
                          torch.tensor(3, dtype=torch.int32)}, EXPECTED, "w")
    with pytest.raises(ValueError, match="w: tensor norm.num_batches_tracked is float32, the network holds an integer"):
        validate_tensors({"conv.weight": torch.ones(4, 3, 3, 3), "norm.num_batches_tracked": torch.tensor(3.0)},
                         EXPECTED, "w")
    with pytest.raises(CheckpointError, match=r"w: weights do not match the description \(missing "
                                              r"\['norm.num_batches_tracked'\], unexpected \['x'\]\)"):
        validate_tensors({"conv.weight": torch.ones(4, 3, 3, 3), "x": torch.ones(1)}, EXPECTED, "w",
                         against="the description", error=CheckpointError)
    validate_tensors({"conv.weight": torch.ones(4, 3, 3, 3)}, EXPECTED, "w", optional={"norm.num_batches_tracked"})
    # a header's tensors (meta: shapes and dtypes, no values) pass on their shapes and dtypes alone
    validate_tensors({k: torch.empty_like(v, device="meta") for k, v in EXPECTED.items()}, EXPECTED, "w")


# --- every reader -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["complex64", "int32", "nan"])
def test_checkpoints_with_such_a_weight_are_refused_when_listed_and_when_loaded(tmp_path, kind):
    from explorer_ui import catalog
    path = make_tiny_checkpoint(tmp_path, "m")
    weights = load_file(tmp_path / "m.safetensors")
    shape = weights["head.weight"].shape
    weights["head.weight"] = {"complex64": torch.zeros(shape, dtype=torch.complex64),
                              "int32": torch.zeros(shape, dtype=torch.int32),
                              "nan": torch.full(shape, float("nan"), dtype=torch.float16)}[kind]
    save_file(weights, tmp_path / "m.safetensors")
    message = {"complex64": "is complex64; weights must be", "int32": "is int32; weights must be",
               "nan": "holds NaN or infinite values"}[kind]
    with pytest.raises(CheckpointError, match=f"m.safetensors: tensor head.weight {message}"):
        load_checkpoint(path)
    description = json.loads(path.read_text())
    if kind == "nan":  # the listing reads headers only: values are load_checkpoint's to check
        catalog.check_weights(path, description)
    else:
        with pytest.raises(CheckpointError, match=f"m.safetensors: tensor head.weight {message}"):
            catalog.check_weights(path, description)


def test_training_state_is_validated_on_resume(tmp_path):
    from diffusion_core.training import RunOptions, Trainer
    images = random_images(8, 16)
    exp = tiny_experiment(epochs=1, batch_size=4)
    Trainer(exp, images, tmp_path, RunOptions(progress=False)).run()
    manifest = json.loads((tmp_path / "state.json").read_text())
    tensors_file = tmp_path / manifest["tensors"]
    state = load_file(tensors_file)
    assert Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()  # as written: fine

    def hand_over(tensors, metadata=None):  # a hostile state whose manifest matches it
        save_file(tensors, tensors_file, metadata)
        (tmp_path / "state.json").write_text(json.dumps(dict(manifest, sha256=sha256_file(tensors_file))))

    broken = dict(state)
    name = next(k for k in state if k.startswith("optim.") and k.endswith(".exp_avg_sq"))
    broken[name] = torch.full_like(state[name], float("inf"))
    hand_over(broken, {"format": "diffusion-explorer-train-state/1"})
    with pytest.raises(CheckpointError, match=f"{tensors_file.name}: tensor {name} holds NaN or infinite values"):
        Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()
    broken = dict(state, **{"model.head.weight": state["model.head.weight"].to(torch.complex64)})
    hand_over(broken)
    with pytest.raises(CheckpointError, match="tensor model.head.weight is complex64"):
        Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()
    del broken["model.head.weight"]
    hand_over(broken)
    with pytest.raises(CheckpointError, match=r"do not match this run's network and optimizer \(missing "
                                              r"\['model.head.weight'\]"):
        Trainer(exp, images, tmp_path, RunOptions(progress=False)).resume()


def test_fid_inception_weights_with_such_a_tensor_are_refused(tmp_path):
    from diffusion_core import inception
    state = {k: (v.half() if v.ndim == 4 else v) for k, v in inception.FIDInceptionV3().state_dict().items()}
    path = tmp_path / "inception.safetensors"
    meta = {"format": inception.SAFETENSORS_FORMAT}
    bad = dict(state, **{"Conv2d_1a_3x3.conv.weight": state["Conv2d_1a_3x3.conv.weight"].to(torch.int32)})
    save_file(bad, path, meta)
    with pytest.raises(ValueError, match="inception.safetensors: tensor Conv2d_1a_3x3.conv.weight is int32"):
        inception.load_inception(path)
    bad["Conv2d_1a_3x3.conv.weight"] = torch.full_like(state["Conv2d_1a_3x3.conv.weight"], float("nan"))
    save_file(bad, path, meta)
    with pytest.raises(ValueError, match="tensor Conv2d_1a_3x3.conv.weight holds NaN"):
        inception.load_inception(path)
    save_file(state, path, meta)
    assert inception.load_inception(path).weights_fp16  # the same file with good values loads
