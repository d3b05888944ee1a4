import glob

import pytest
import torch

from diffusion_core.config import load_experiment
from diffusion_core.unet import UNet, UNetConfig, count_parameters, sinusoidal_embedding

CONFIGS = sorted(glob.glob("experiments/*.toml"))


def test_every_seed_experiment_network_builds_and_runs():
    seen = set()
    assert len(CONFIGS) >= 12
    for path in CONFIGS:
        net_cfg = load_experiment(path).network
        if net_cfg in seen:
            continue
        seen.add(net_cfg)
        net = UNet(net_cfg).eval()
        s = net_cfg.image_size
        with torch.no_grad():
            out = net(torch.randn(1, 3, s, s), torch.tensor([0.5]))
        assert out.shape == (1, 3, s, s)
    sizes = {c.image_size for c in seen}
    assert {64, 80, 112, 128} <= sizes


@pytest.mark.parametrize("widths,depth,params", [
    ((32, 64, 96, 128), 2, 1_950_627),  # the Keras example's "2.0M"
    ((32, 64, 96, 128, 256), 4, 10_415_139),  # seed experiments 8-11: "10.4M"
    ((64, 128, 256, 512), 2, 17_039_107),  # the DDPM row: "17M"
])
def test_parameter_counts_of_the_reference_design(widths, depth, params):
    assert count_parameters(UNet(UNetConfig(widths=widths, block_depth=depth, image_size=80 if len(widths) == 5 else 64))) == params


def test_five_levels_at_80_and_112():
    assert UNetConfig(widths=(32, 64, 96, 128, 256), image_size=80).resolutions == (80, 40, 20, 10, 5)
    assert UNetConfig(widths=(32, 64, 96, 128, 256), image_size=112).resolutions == (112, 56, 28, 14, 7)


def test_zero_initialised_head_and_dependence_on_noise_level():
    net = UNet(UNetConfig(widths=(8, 16), block_depth=1, image_size=16)).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.count_nonzero(net(x, torch.rand(2))) == 0  # final 1x1 conv starts at zero
    torch.nn.init.normal_(net.head.weight, std=0.1)
    a, b = net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9]))
    assert not torch.allclose(a, b)


def test_attention_option():
    cfg = UNetConfig(widths=(16, 32, 64), block_depth=2, image_size=16, attention_resolutions=(8, 4))
    net = UNet(cfg)
    n_attn = sum(1 for m in net.modules() if m.__class__.__name__ == "SelfAttention")
    assert n_attn == 2 + 2 + 2  # 2 blocks each: down level at 8, middle at 4, up level at 8
    assert count_parameters(net) > count_parameters(UNet(UNetConfig(widths=(16, 32, 64), block_depth=2, image_size=16)))
    assert net(torch.randn(2, 3, 16, 16), torch.rand(2)).shape == (2, 3, 16, 16)


def test_sinusoidal_embedding_formula():
    e = sinusoidal_embedding(torch.tensor([0.25]), 4, 1.0, 1000.0)
    freqs = torch.tensor([1.0, 1000.0])
    expected = torch.cat([torch.sin(2 * torch.pi * freqs * 0.25), torch.cos(2 * torch.pi * freqs * 0.25)])
    assert torch.allclose(e[0], expected, atol=1e-3)  # float32 angles up to 2 pi 250


def test_bad_network_configs():
    with pytest.raises(ValueError, match="multiple of 8"):
        UNetConfig(widths=(32, 64, 96, 128), image_size=100)
    with pytest.raises(ValueError, match="at least two"):
        UNetConfig(widths=(32,))
    with pytest.raises(ValueError, match="not one of the levels"):
        UNetConfig(widths=(32, 64), image_size=16, attention_resolutions=(4,))
    net = UNet(UNetConfig(widths=(8, 16), block_depth=1, image_size=16))
    with pytest.raises(ValueError, match="takes 16x16 images, got 32x32"):
        net(torch.randn(1, 3, 32, 32), torch.rand(1))
