import json
from pathlib import Path

import pytest
import torch

from diffusion_core.checkpoint import (CheckpointError, describe_model, find_checkpoints, load_checkpoint,
                                       read_description, save_checkpoint, update_description)
from diffusion_core.generate import generate, invert
from diffusion_core.model import PixelNormalization
from diffusion_core.samplers import SamplerConfig
from diffusion_core.unet import UNet
from tests.helpers import make_tiny_checkpoint, random_images, tiny_experiment


def _net_and_desc():
    exp = tiny_experiment()
    torch.manual_seed(0)
    net = UNet(exp.network)
    torch.nn.init.normal_(net.head.weight, std=0.05)
    for m in net.modules():  # non-trivial BatchNorm statistics must survive the round trip too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return exp, net, describe_model(exp, PixelNormalization(), net, {"images_seen": 12})


def test_round_trip_is_exact_in_float32(tmp_path):
    exp, net, desc = _net_and_desc()
    save_checkpoint(tmp_path / "m", net.state_dict(), desc)
    loaded = load_checkpoint(tmp_path / "m.json")
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[k], v), k
    assert loaded.experiment == exp
    assert not loaded.network.training and not any(p.requires_grad for p in loaded.network.parameters())
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded.network(x, torch.rand(2) * 0 + 0.3), net(x, torch.full((2,), 0.3)))


def test_fp16_shipping_and_sharding(tmp_path):
    _, net, desc = _net_and_desc()
    paths = save_checkpoint(tmp_path / "m", net.state_dict(), desc, dtype=torch.float16, shard_bytes=4000)
    d = read_description(tmp_path / "m")
    assert len(d["weights_files"]) > 1 and len(paths) == 1 + len(d["weights_files"])
    assert d["weights_dtype"] == "float16,int64"  # int64: BatchNorm's num_batches_tracked
    loaded = load_checkpoint(tmp_path / "m")
    for k, v in net.state_dict().items():
        ref = v.half().float() if v.is_floating_point() else v
        assert torch.equal(loaded.network.state_dict()[k], ref), k


def test_generate_is_seed_deterministic_and_shapes(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path))
    a = generate(model, [0, 1, 2], SamplerConfig("ddim", 5))
    b = generate(model, [2, 1], SamplerConfig("ddim", 5))
    assert a.shape == (3, 16, 16, 3) and a.dtype.name == "uint8"
    assert (a[2] == b[0]).all() and (a[1] == b[1]).all() and not (a[0] == a[1]).all()
    with pytest.raises(ValueError, match="beyond this model's schedule: choose 1 to 1000"):
        generate(model, [0], SamplerConfig("ddim", 1001))


def test_wrong_image_size_for_checkpoint(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path))
    with pytest.raises(ValueError, match="takes 16x16 images, got 32x32"):
        invert(model, random_images(1, 32), 5)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint description"):
        load_checkpoint(tmp_path / "nothing.json")
    path = make_tiny_checkpoint(tmp_path, "a")
    (tmp_path / "a.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path)
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a diffusion-explorer checkpoint"):
        load_checkpoint(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("[" * 100_000 + "]" * 100_000)  # small file, nesting beyond the parser
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "d.json")
    # missing weight file
    p = make_tiny_checkpoint(tmp_path, "d")
    (tmp_path / "d.safetensors").unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(p)


def test_description_that_does_not_match_its_weights(tmp_path):
    p = make_tiny_checkpoint(tmp_path, "e")
    d = json.loads(p.read_text())
    d["experiment"]["network"]["widths"] = [8, 24]
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(p)
    d["experiment"]["network"]["block_depth"] = 2
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="weights do not match the description"):
        load_checkpoint(p)


def test_hostile_descriptions_are_refused(tmp_path):
    p = make_tiny_checkpoint(tmp_path, "f")
    d = json.loads(p.read_text())
    d["weights_files"] = ["../../etc/passwd.safetensors"]
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="outside its folder"):
        load_checkpoint(p)
    d = json.loads(make_tiny_checkpoint(tmp_path, "g").read_text())
    d["experiment"]["network"]["widths"] = [100000, 200000]
    (tmp_path / "g.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"\[network\] widths\[0\] must be an integer from 1 to 2048, got 100000"):
        load_checkpoint(tmp_path / "g.json")
    d["experiment"]["network"]["unknown_knob"] = 1
    (tmp_path / "g.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="unknown key"):
        load_checkpoint(tmp_path / "g.json")


def test_nan_weights_are_refused(tmp_path):
    _, net, desc = _net_and_desc()
    sd = net.state_dict()
    sd["head.bias"] = torch.tensor([float("nan"), 0.0, 0.0])
    save_checkpoint(tmp_path / "n", sd, desc)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(tmp_path / "n")


def test_find_and_update(tmp_path):
    make_tiny_checkpoint(tmp_path, "one")
    make_tiny_checkpoint(tmp_path, "two")
    (tmp_path / "other.json").write_text("[]")
    assert [p.stem for p in find_checkpoints(tmp_path)] == ["one", "two"]
    update_description(tmp_path / "one", metrics={"fid": 12.5})
    update_description(tmp_path / "one", metrics={"kid": 0.01})
    assert read_description(tmp_path / "one")["metrics"] == {"fid": 12.5, "kid": 0.01}
    assert find_checkpoints(tmp_path / "missing") == []


def test_description_counts_parameters_of_frozen_networks(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path))
    desc = describe_model(model.experiment, model.normalization, model.network)
    assert desc["parameters"] == sum(p.numel() for p in UNet(model.experiment.network).parameters()) > 0


def test_reading_and_listing_checkpoints_imports_no_triton(tmp_path):
    """Only runtime's fused path imports Triton: reading, listing and eager sampling never do. A
    stand-in ``triton`` package first on the path shows whether anything imports it (the control:
    the fused kernels' module does)."""
    import os
    import subprocess
    import sys

    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text("")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]))
    probe = "import sys, {}; print('triton' in sys.modules)"
    light = ("diffusion_core.checkpoint, diffusion_core.config, diffusion_core.generate, diffusion_core.runtime, "
             "diffusion_core.networks, diffusion_core.training, explorer_ui.catalog")
    for modules, imported in ((light, "False"), ("diffusion_core.fused.conv", "True")):
        done = subprocess.run([sys.executable, "-c", probe.format(modules)], env=env, cwd=root, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == imported, modules
