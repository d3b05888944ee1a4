"""Networks behind one factory (diffusion_core.networks): network.kind in configs and descriptions,
the reference U-Net as the default kind, unknown kinds refused by name."""

import json

import pytest
import torch

from diffusion_core import networks
from diffusion_core.checkpoint import load_checkpoint, read_description
from diffusion_core.config import ConfigError, ExperimentConfig, load_experiment
from diffusion_core.unet import UNet, UNetConfig
from tests.helpers import make_tiny_checkpoint, tiny_experiment


def test_a_network_table_without_a_kind_is_the_reference_unet(tmp_path):
    e = load_experiment("experiments/ddim_01.toml")  # no kind in the file
    assert e.network.kind == "unet" and isinstance(e.network, UNetConfig)
    net = networks.build_network(e.network)
    assert type(net) is UNet and net.training
    # the parameter count of the seed network (test_unet's table)
    assert networks.count_parameters(net) == 1_950_627  # the Keras example's "2.0M" (test_unet)
    (tmp_path / "x.toml").write_text('[network]\nkind = "unet"\nwidths = [16, 32]\nimage_size = 8\n')
    assert load_experiment(tmp_path / "x.toml").network == UNetConfig(widths=(16, 32), image_size=8)


def test_an_unknown_kind_is_refused_naming_the_field_and_the_known_kinds(tmp_path):
    (tmp_path / "x.toml").write_text('[network]\nkind = "transformer"\nwidths = [16, 32]\n')
    with pytest.raises(ConfigError, match=r"x.toml: \[network\]: network.kind must be one of diffusers_unet2d, unet, got 'transformer'"):
        load_experiment(tmp_path / "x.toml")
    with pytest.raises(ConfigError, match="network.kind must be one of diffusers_unet2d, unet, got 3"):
        ExperimentConfig.from_dict({"name": "x", "network": {"kind": 3}})
    with pytest.raises(ValueError, match="network.kind must be one of diffusers_unet2d, unet"):
        networks.build_network(object())
    with pytest.raises(ValueError, match="a UNetConfig has network.kind 'unet', got 'other'"):
        UNetConfig(kind="other")


def test_descriptions_carry_the_kind_and_older_ones_without_it_load(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "new")
    assert read_description(path)["experiment"]["network"]["kind"] == "unet"
    reference = load_checkpoint(path)
    d = json.loads(path.read_text())
    del d["experiment"]["network"]["kind"]  # as every checkpoint written before network.kind
    (tmp_path / "old.safetensors").write_bytes((tmp_path / "new.safetensors").read_bytes())
    d["weights_files"] = ["old.safetensors"]
    (tmp_path / "old.json").write_text(json.dumps(dict(d, name="old")))
    old = load_checkpoint(tmp_path / "old.json")
    assert old.experiment == reference.experiment
    for (k, a), (_, b) in zip(old.network.state_dict().items(), reference.network.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_description_of_an_unknown_kind_is_refused(tmp_path):
    from diffusion_core.checkpoint import CheckpointError
    path = make_tiny_checkpoint(tmp_path, "k")
    d = json.loads(path.read_text())
    d["experiment"]["network"]["kind"] = "transformer2d"
    path.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="network.kind must be one of diffusers_unet2d, unet, got 'transformer2d'"):
        load_checkpoint(path)


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    """A second kind registered with its config and builder: configs of that kind load, build and
    are checked against its own limits; nothing else changes."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class TinyConfig:
        kind: str = "tiny"
        image_size: int = 8
        channels: int = 3

    class Tiny(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.conv = torch.nn.Conv2d(config.channels, config.channels, 1)

        def forward(self, x, noise_variance):
            return self.conv(x)

    limits = lambda c: "image_size <= 64" if c.image_size > 64 else None  # noqa: E731
    monkeypatch.setitem(networks.KINDS, "tiny", networks.NetworkKind(TinyConfig, Tiny, limits))
    e = ExperimentConfig.from_dict({"name": "t", "network": {"kind": "tiny", "image_size": 16}})
    assert e.network == TinyConfig(image_size=16) and e.to_dict()["network"]["kind"] == "tiny"
    assert networks.count_parameters(networks.build_network(e.network)) == 12
    assert networks.beyond_limits(TinyConfig(image_size=128)) == "image_size <= 64"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) widths"):
        ExperimentConfig.from_dict({"name": "t", "network": {"kind": "tiny", "widths": [8, 16]}})


def test_limits_of_an_untrusted_unet_config():
    assert networks.beyond_limits(tiny_experiment().network) is None
    assert networks.beyond_limits(UNetConfig(widths=(32, 4096), image_size=64)) == str(networks.UNET_LIMITS)
