import glob

import pytest
import torch

from diffusion_core.config import load_experiment
from diffusion_core.networks import count_parameters
from diffusion_core.unet import UNet, UNetConfig, sinusoidal_embedding

CONFIGS = sorted(glob.glob("experiments/*.toml"))


@pytest.mark.slow
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


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 5, 1, 4), (3, 4, 5, 7), (2, 16, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_written_out_upsampling_is_pytorchs_bilinear(shape, channels_last):
    """upsample2x_written_out gives F.interpolate(scale 2, bilinear, align_corners=False) and its
    gradient, edges and 1-pixel inputs included, and keeps the memory format."""
    import torch.nn.functional as F

    from diffusion_core.unet import upsample2x_written_out

    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    ours = upsample2x_written_out(xin)
    ref = F.interpolate(xin, scale_factor=2, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=0, atol=1e-12)
    if channels_last and shape[2] * shape[3] > 1:
        assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
    # by hand, one interior and one edge value along H (W = 1): 3/4 x[i] + 1/4 x[i -/+ 1], clamped
    col = torch.tensor([[[[1.0], [5.0], [9.0]]]])
    up = upsample2x_written_out(col)[0, 0, :, 0]
    assert up.tolist() == [1.0, 2.0, 4.0, 6.0, 8.0, 9.0]
    with pytest.raises(ValueError, match=r"expected \[N x C x H x W\]"):
        upsample2x_written_out(torch.zeros(3, 4, 4))


@pytest.mark.slow
def test_compiled_passes_pick_the_upsampling_by_need_for_gradients(monkeypatch):
    """Inside torch.compile a pass with gradients traces the written-out upsampling (no atomic
    scatter in its backward) and an inference pass PyTorch's kernel; the compiled network computes
    what the eager one does."""
    import diffusion_core.unet as unet_module

    traced = []
    original = unet_module.upsample2x_written_out
    monkeypatch.setattr(unet_module, "upsample2x_written_out", lambda x: traced.append(x.shape) or original(x))
    cfg = UNetConfig(widths=(8, 16), block_depth=1, image_size=16)
    torch.manual_seed(0)
    net = UNet(cfg)
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x, v = torch.randn(2, 3, 16, 16), torch.rand(2)
    net(x, v)  # eager: PyTorch's kernel
    assert traced == []
    compiled = torch.compile(net, backend="aot_eager")
    out = compiled(x, v)
    assert traced == [(2, 16, 8, 8)]
    out.sum().backward()
    net.eval()
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(net, backend="aot_eager")(x, v), net(x, v))
    assert len(traced) == 1


def test_inference_upsampling_keeps_the_activation_dtype_out_of_autocast(monkeypatch):
    """Without gradients the upsampling runs outside autocast, in the input's dtype (CUDA's autocast
    upcasts upsampling to float32, which made the skip concatenation and BatchNorm after it float32
    too); with gradients autocast's policy stands. The bf16 result is the float32 one rounded."""
    import torch.nn.functional as F

    import diffusion_core.unet as unet_module

    seen = []
    real = F.interpolate
    monkeypatch.setattr(unet_module.F, "interpolate",
                        lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or real(*a, **k))
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet_module.upsample2x_bilinear(x.bfloat16())
        unet_module.upsample2x_bilinear(x.clone().requires_grad_())
    assert seen == [False, True]
    assert out.dtype == torch.bfloat16
    ref = real(x.bfloat16().float(), scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.float(), ref, rtol=2**-7, atol=0)


def test_channels_last_input_stays_channels_last_through_every_layer():
    """With channels_last weights and input, every BatchNorm and convolution sees channels_last:
    the noise embedding is concatenated in the stem's memory format (an NCHW concatenation made the
    first block convert layouts, 2.1 ms of an 18.5 ms compiled training step on an H100)."""
    net = UNet(UNetConfig(widths=(8, 16, 24), block_depth=2, image_size=16)).eval().to(memory_format=torch.channels_last)
    torch.nn.init.normal_(net.head.weight, std=0.1)  # a zero head would make the comparison below trivial
    seen = []
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
            m.register_forward_hook(lambda m, inp, out: seen.append(
                inp[0].is_contiguous(memory_format=torch.channels_last) and not inp[0].is_contiguous()))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = net(x, torch.rand(2))
    assert len(seen) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) for m in net.modules())
    assert all(seen)
    v = torch.rand(2)
    with torch.no_grad():
        a = net(x, v)
        b = net.to(memory_format=torch.contiguous_format)(x.contiguous(), v)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert a.abs().mean() > 0.01
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the layout changes no value
