"""BatchNorm folded into the convolution after it (diffusion_core.folding): the same function,
border included, in every memory format and block kind; the original network untouched."""

import pytest
import torch

from diffusion_core import runtime
from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.folding import FoldedResidualBlock, fold_batchnorm
from diffusion_core.unet import ResidualBlock, UNet, UNetConfig
from tests.helpers import make_tiny_checkpoint


def _network(config: UNetConfig) -> UNet:
    torch.manual_seed(0)
    net = UNet(config)
    torch.nn.init.normal_(net.head.weight, std=0.1)  # a zero head would make every comparison trivial
    for m in net.modules():  # statistics far from (0, 1), so that scale and shift both matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.2, 5)
    return net.eval()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("config", [UNetConfig(widths=(8, 16, 24), block_depth=2, image_size=16),
                                    UNetConfig(widths=(8, 16), block_depth=1, image_size=8,
                                               attention_resolutions=(4,))])
def test_folded_network_computes_the_same_function(config, channels_last):
    net = _network(config)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    blocks = sum(isinstance(m, ResidualBlock) for m in net.modules())
    assert sum(isinstance(m, FoldedResidualBlock) for m in folded.modules()) == blocks > 0
    assert not any(isinstance(m, (ResidualBlock, torch.nn.BatchNorm2d)) for m in folded.modules())
    x = torch.randn(3, 3, config.image_size, config.image_size).contiguous(memory_format=fmt)
    v = torch.rand(3)
    with torch.inference_mode():
        ref, out = net(x, v), folded(x, v)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for k, t in net.state_dict().items():  # the original is untouched
        assert torch.equal(t, before[k]), k
    if channels_last:
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) and
                   m.bias_map.is_contiguous(memory_format=torch.channels_last)
                   for m in folded.modules() if isinstance(m, FoldedResidualBlock))


def test_the_bias_map_is_what_the_padding_makes_of_the_shift():
    """Inside, the map is the bias plus the sum of the weights times the shift; on the border the
    kernel taps that fall into the padding are missing (zero in normalised units)."""
    block = ResidualBlock(2, 3, momentum=0.1).eval()
    with torch.no_grad():
        block.norm.running_mean.copy_(torch.tensor([1.0, -2.0]))
        block.norm.running_var.copy_(torch.tensor([4.0, 0.25]))
    folded = FoldedResidualBlock(block, (5, 5))
    s = torch.rsqrt(block.norm.running_var + block.norm.eps)
    t = -block.norm.running_mean * s
    w, b = block.conv1.weight, block.conv1.bias
    inside = b + (w * t[None, :, None, None]).sum((1, 2, 3))
    corner = b + (w[:, :, 1:, 1:] * t[None, :, None, None]).sum((1, 2, 3))  # top-left: row and column -1 missing
    torch.testing.assert_close(folded.bias_map[0, :, 2, 2], inside)
    torch.testing.assert_close(folded.bias_map[0, :, 0, 0], corner)
    torch.testing.assert_close(folded.weight, (w * s[None, :, None, None]).detach())


def test_only_eval_networks_fold():
    net = UNet(UNetConfig(widths=(8, 16), block_depth=1, image_size=8))
    with pytest.raises(ValueError, match="fold a network in eval mode"):
        fold_batchnorm(net)


def test_a_loaded_model_samples_with_the_folded_network_once(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path))
    first, second = runtime.denoiser(model), runtime.denoiser(model, None)
    assert first.network is second.network is runtime.sampling_network(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in first.network.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.network.modules())  # exports keep the original
