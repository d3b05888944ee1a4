"""The fused sampling convolution (diffusion_core/fused/conv.py) and the fused U-Net built from it
(diffusion_core/fused/unet.py), run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1): every operand combination against PyTorch's convolutions, the whole network
against the network it was built from, and the errors a caller can cause. In float32/float64: the
interpreter's bf16 matrix product is not numerically meaningful (bf16 agreement is checked on a GPU
by bench/bench_fused.py)."""

import pytest
import torch

pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from diffusion_core.fused import conv as fc  # noqa: E402
from diffusion_core.fused import resample as fr  # noqa: E402
from diffusion_core import runtime  # noqa: E402
from diffusion_core.fused.unet import FusedUNet, fusable  # noqa: E402
from diffusion_core.model import Denoiser  # noqa: E402
from diffusion_core.unet import UNet, UNetConfig  # noqa: E402

TILES = {"small tiles": fc.Tiles(block_m=32, block_n=32, block_k=16),  # several programs, ragged edges
         "one tile": fc.Tiles(block_m=128, block_n=64, block_k=16),  # all 70 pixels and 48 channels in one
         "four image rows": fc.Tiles(block_n=32, block_k=16, rows=4)}  # 8x16 maps: 2 row tiles, ragged columns


def _operands(n=2, h=5, w=7, ca=32, cb=16, c_out=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=r(n, h, w, ca), skip=r(n, h, w, cb), w3a=r(c_out, ca, 3, 3) / 10, w3b=r(c_out, cb, 3, 3) / 10,
                w1a=r(c_out, ca, 1, 1) / 5, w1b=r(c_out, cb, 1, 1) / 5, bias=r(c_out), bias_table=r(3, 3, c_out),
                residual=r(n, h, w, c_out))


@pytest.mark.slow
@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
@pytest.mark.parametrize("kernel", list(TILES))
@pytest.mark.parametrize("with_skip", [False, True])
@pytest.mark.parametrize("epilogue", ["bias", "bias table + silu", "shortcut 1x1", "residual",
                                      "bias per image", "bias table per image + silu"])
def test_fused_conv_matches_pytorch(kernel, with_skip, epilogue):
    h, w = (8, 16) if TILES[kernel].rows else (5, 7)  # row tiles: heights a multiple of 4, widths a power of 2
    o = _operands(h=h, w=w)
    skip = o["skip"] if with_skip else None
    w3 = [o["w3a"], o["w3b"]] if with_skip else [o["w3a"]]
    shortcut, w1, residual, bias, silu = (), [], None, o["bias"], False
    if epilogue == "bias table + silu":
        bias, silu = o["bias_table"], True
    elif epilogue == "shortcut 1x1":
        shortcut, w1 = ((o["x"], o["skip"]), [o["w1a"], o["w1b"]]) if with_skip else ((o["x"],), [o["w1a"]])
    elif epilogue == "residual":
        residual = o["residual"]
    elif epilogue == "bias per image":
        bias = o["bias"] * torch.tensor([[1.0], [-3.0]])  # [N, C]
    elif epilogue == "bias table per image + silu":
        bias, silu = torch.stack([o["bias_table"], -2 * o["bias_table"].flip(0)]), True  # [N, 3, 3, C]
    out = fc.fused_conv(o["x"], fc.pack_weights(w3, w1), bias, skip=skip, shortcut=shortcut,
                        residual=residual, silu=silu, tiles=TILES[kernel])
    ref = fc.reference_conv(o["x"], w3, w1, bias, skip=skip, shortcut=shortcut, residual=residual, silu=silu)
    assert out.shape == ref.shape == (2, h, w, 48)
    assert ref.abs().max() > 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_row_tiles_are_the_default_where_they_measured_faster():
    """Tiles of four image rows, 2 warps, on 32- and 64-wide maps with at most 2048 accumulator
    values per row (docs/performance.md); flattened pixels elsewhere."""
    t = fc.default_tiles(32, (64, 32), 256 * 64 * 64, (64, 64))
    assert (t.rows, t.num_warps, t.num_stages, t.block_n) == (4, 2, 3, 32)
    assert fc.default_tiles(64, (96, 64), 256 * 32 * 32, (32, 32)).rows == 4
    assert fc.default_tiles(3, (32, 0), 256 * 64 * 64, (64, 64)).num_stages == 2  # the head's 3 channels
    assert fc.default_tiles(96, (96, 0), 256 * 16 * 16, (16, 16)).rows == 0  # narrow maps
    assert fc.default_tiles(32, (32, 0), 256 * 80 * 80, (80, 80)).rows == 0  # not a power of two
    assert fc.default_tiles(64, (64, 0), 256 * 64 * 64, (64, 64)).rows == 0  # 4096 accumulators a row
    assert fc.default_tiles(32, (32, 0), 6 * 64, (6, 64)).rows == 0  # 6 rows: no tiles of 4
    assert fc.default_tiles(32, (32, 0), 256 * 64 * 64).rows == 0  # no image shape given


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_row_tiles_refuse_maps_they_cannot_cover():
    o = _operands(h=6, w=16)
    packed = fc.pack_weights([o["w3a"]], [])
    with pytest.raises(ValueError, match="row tiles take 4 rows"):
        fc.fused_conv(o["x"], packed, o["bias"], tiles=fc.Tiles(block_k=16, rows=4))
    o = _operands(h=8, w=12)
    with pytest.raises(ValueError, match="power of two"):
        fc.fused_conv(o["x"], packed, o["bias"], tiles=fc.Tiles(block_k=16, rows=4))
    # and a shape that does fit takes the default (row) tiles without being asked
    o = _operands(n=1, h=4, w=32, cb=16, c_out=16)
    assert fc.default_tiles(16, (32, 0), 4 * 32, (4, 32)).rows == 4
    out = fc.fused_conv(o["x"], fc.pack_weights([o["w3a"]], []), o["bias"])
    torch.testing.assert_close(out, fc.reference_conv(o["x"], [o["w3a"]], [], o["bias"]), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_fused_conv_writes_outputs_narrower_than_a_tile():
    """The last block with the head folded in writes the image's 3 channels (a 16-wide tile, masked)."""
    o = _operands(c_out=3)
    shortcut = (o["x"], o["skip"])
    w3, w1 = [o["w3a"]], [o["w1a"], o["w1b"]]
    out = fc.fused_conv(o["x"], fc.pack_weights(w3, w1), o["bias"], shortcut=shortcut)
    ref = fc.reference_conv(o["x"], w3, w1, o["bias"], shortcut=shortcut)
    assert out.shape == (2, 5, 7, 3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_a_narrow_shortcut_keeps_the_wide_chunks_of_the_3x3_convolution():
    """The first block's second launch: a 32-channel 3x3 convolution and a 1x1 shortcut over the
    16 padded image channels; the 3x3 part keeps 32-channel chunks, the 1x1 part takes 16."""
    o = _operands(ca=32, cb=16)
    assert fc.default_tiles(48, (32, 0), 70).block_k == 32
    w3, w1 = [o["w3a"]], [o["w1b"]]
    out = fc.fused_conv(o["x"], fc.pack_weights(w3, w1), o["bias"], shortcut=(o["skip"],),
                        tiles=fc.Tiles(block_m=32, block_n=32, block_k=32))
    ref = fc.reference_conv(o["x"], w3, w1, o["bias"], shortcut=(o["skip"],))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1x1 channel counts"):
        fc.fused_conv(o["x"], fc.pack_weights(w3, [w1[0][:, :8]]), o["bias"], shortcut=(o["skip"][..., :8].contiguous(),))


def test_packed_weights_are_tap_major_then_channel():
    w3 = torch.randn(4, 3, 3, 3)
    w1 = torch.randn(4, 2, 1, 1)
    packed = fc.pack_weights([w3], [w1])
    assert packed.shape == (9 * 3 + 2, 4)
    for dy in range(3):
        for dx in range(3):
            for c in range(3):
                torch.testing.assert_close(packed[(3 * dy + dx) * 3 + c], w3[:, c, dy, dx])
    torch.testing.assert_close(packed[27:], w1[:, :, 0, 0].t())


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_fused_conv_rejects_what_it_cannot_compute():
    o = _operands()
    packed = fc.pack_weights([o["w3a"]], [])
    with pytest.raises(ValueError, match="packed weight has"):
        fc.fused_conv(o["x"], packed, o["bias"], skip=o["skip"])
    with pytest.raises(ValueError, match="contiguous"):
        fc.fused_conv(o["x"].transpose(1, 2).contiguous().transpose(1, 2), packed, o["bias"])
    with pytest.raises(ValueError, match="bias must be"):
        fc.fused_conv(o["x"], packed, torch.zeros(5, 7, 48))
    with pytest.raises(ValueError, match="bias must be"):  # per image, but for 3 images of 2
        fc.fused_conv(o["x"], packed, torch.zeros(3, 48))
    x = torch.randn(2, 5, 7, 24)
    with pytest.raises(ValueError, match="multiples of block_k"):
        fc.fused_conv(x, fc.pack_weights([torch.randn(48, 24, 3, 3)], []), o["bias"])
    # offsets are 32-bit: an activation of 2**31 elements is refused (meta tensors: no memory)
    big = torch.empty(8192, 64, 64, 64, device="meta")
    with pytest.raises(ValueError, match=r"fewer than 2\*\*31 elements"):
        fc.fused_conv(big, torch.empty(9 * 64, 32, device="meta"), torch.empty(32, device="meta"))


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
@pytest.mark.parametrize("shape", [(2, 5, 7, 48), (1, 1, 1, 16), (3, 8, 6, 130)])
def test_resampling_kernels_match_pytorch(shape):
    x = torch.randn(*shape)
    nchw = x.permute(0, 3, 1, 2)
    up = fr.upsample2x(x)
    assert up.shape == (shape[0], 2 * shape[1], 2 * shape[2], shape[3]) and up.is_contiguous()
    torch.testing.assert_close(up, F.interpolate(nchw, scale_factor=2, mode="bilinear",
                                                 align_corners=False).permute(0, 2, 3, 1))
    if shape[1] % 2 == 0 and shape[2] % 2 == 0:
        torch.testing.assert_close(fr.avgpool2x(x), F.avg_pool2d(nchw, 2).permute(0, 2, 3, 1))
    else:
        with pytest.raises(ValueError, match="even height and width"):
            fr.avgpool2x(x)
    with pytest.raises(ValueError, match="contiguous NHWC"):
        fr.upsample2x(torch.randn(2, 4, 6, 16).transpose(1, 2))


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_resampling_refuses_what_32_bit_offsets_cannot_address():
    """Refused before any launch, like fused_conv (meta tensors: no memory, no kernel)."""
    with pytest.raises(ValueError, match=r"fewer than 2\*\*31 elements"):
        fr.upsample2x(torch.empty(2048, 64, 64, 64, device="meta"))  # 2**29 elements in, 2**31 out
    with pytest.raises(ValueError, match=r"fewer than 2\*\*31 elements"):
        fr.avgpool2x(torch.empty(8192, 64, 64, 64, device="meta"))  # 2**31 in


def test_border_table_round_trip():
    """A 3x3 convolution of a constant with zero padding is a function of the border class."""
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    for h, wd in [(1, 1), (2, 3), (5, 7)]:
        bias_map = torch.nn.functional.conv2d(torch.ones(1, 4, h, wd, dtype=torch.float64), w,
                                              padding=1)[0].permute(1, 2, 0)
        table = fc.border_table(bias_map)
        assert table.shape == (3, 3, 6)
        torch.testing.assert_close(fc.expand_border_table(table, h, wd), bias_map)


def _network(config: UNetConfig) -> UNet:
    torch.manual_seed(0)
    net = UNet(config).double()
    torch.nn.init.normal_(net.head.weight, std=0.1)  # a zero head would make the comparison trivial
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.2, 5)
    return net.eval()


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
@pytest.mark.parametrize("config", [
    UNetConfig(widths=(16, 32, 48), block_depth=2, image_size=8, embedding_dims=16),
    UNetConfig(widths=(16, 32), block_depth=1, image_size=8, embedding_dims=16, attention_resolutions=(4,)),
    # attention after the last block: the head stays a convolution of its own; a grey-scale image
    # and an embedding whose width is no multiple of 16 (it enters as a bias)
    UNetConfig(widths=(16, 32), block_depth=1, image_size=8, embedding_dims=10, channels=1,
               attention_resolutions=(8,)),
])
@pytest.mark.slow
def test_fused_network_computes_the_network(config):
    net = _network(config)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = FusedUNet(net, torch.float64)
    x = torch.randn(2, config.channels, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    v = torch.rand(2, dtype=torch.float64)
    with torch.inference_mode():
        ref, out = net(x, v), fused(x, v)
    assert (fused.head is None) == (8 not in config.attention_resolutions)
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # float32 accumulation in the kernel
    for k, t in net.state_dict().items():
        assert torch.equal(t, before[k]), k
    with pytest.raises(ValueError, match="takes 8x8 images"):
        fused(torch.zeros(1, config.channels, 16, 16, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def test_networks_with_narrow_channels_are_not_fused():
    net = UNet(UNetConfig(widths=(8, 16), block_depth=1, image_size=8)).eval()
    assert not fusable(net)
    with pytest.raises(ValueError, match="multiples of 16"):
        FusedUNet(net)
    assert fusable(UNet(UNetConfig(widths=(32, 64), block_depth=1, image_size=8)).eval())


# --- where the fused network is used ------------------------------------------------------------
def _fusable_model(tmp_path):
    import dataclasses

    from diffusion_core.checkpoint import load_checkpoint
    from tests.helpers import make_tiny_checkpoint
    model = load_checkpoint(make_tiny_checkpoint(tmp_path))
    net = _network(UNetConfig(widths=(16, 32), block_depth=1, image_size=16, embedding_dims=16)).float()
    return dataclasses.replace(model, network=net)


@pytest.mark.slow
def test_the_fused_kernels_are_used_only_where_they_run(tmp_path, monkeypatch):
    from diffusion_core.fused import unet as fused_unet
    model = _fusable_model(tmp_path)
    assert not fused_unet.fused_available(model.network)  # a CPU
    assert not runtime.fused_available(model.network)
    assert runtime.denoiser(model, torch.bfloat16, compile=True)._forward is not runtime.sampling_network(model)
    monkeypatch.setattr(fc, "available", lambda device: True)
    assert fused_unet.fused_available(model.network)
    assert not runtime.fused_available(model.network)  # runtime asks Triton only for a network on CUDA
    assert not fused_unet.fused_available(UNet(UNetConfig(widths=(8, 16), block_depth=1, image_size=8)))
    monkeypatch.setenv("DIFFUSION_EXPLORER_FUSED", "0")
    assert not fused_unet.fused_available(model.network)
    monkeypatch.delenv("DIFFUSION_EXPLORER_FUSED")

    monkeypatch.setattr(runtime, "fused_available", fused_unet.fused_available)  # as on CUDA
    monkeypatch.setattr(fused_unet, "CudaGraphed", lambda network: network)  # CUDA graphs need CUDA
    fresh = _fusable_model(tmp_path)
    fast = runtime.denoiser(fresh, torch.bfloat16, compile=True)
    assert isinstance(fast._forward, FusedUNet) and fast._forward.dtype == torch.bfloat16 and fast.compiled
    assert runtime.denoiser(fresh, torch.bfloat16, compile=True)._forward is fast._forward  # built once
    assert runtime.denoiser(fresh, torch.bfloat16)._forward is runtime.sampling_network(fresh)  # not asked: eager
    # float32: torch.compile, no bf16 kernels
    assert runtime.denoiser(fresh, None, compile=True)._forward is not fast._forward
    assert runtime.runs_fused(fresh, torch.bfloat16) and not runtime.runs_fused(fresh, None)  # compile_pays' rule too


@pytest.mark.slow
@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_a_denoiser_samples_the_same_through_the_fused_network(tmp_path):
    from diffusion_core.samplers import SamplerConfig, sample, sample_steps
    model = _fusable_model(tmp_path)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = []
    for fast in (None, FusedUNet(model.network, torch.float32)):
        d = Denoiser(runtime.sampling_network(model), "eps", model.normalization, None, fast=fast)
        images.append(sample(sample_steps(d, model.experiment.schedule, x_T, SamplerConfig("ddim", 3))))
        assert d.calls == 3
    assert images[0].abs().max() > 0.1
    torch.testing.assert_close(images[1], images[0], rtol=1e-4, atol=1e-4)
    # the fused network as the denoiser's own network: its weights are buffers, no parameters
    fused = FusedUNet(model.network, torch.float32)
    assert not list(fused.parameters())
    d = Denoiser(fused, "eps", model.normalization, None)
    assert d.device == torch.device("cpu")
    torch.testing.assert_close(sample(sample_steps(d, model.experiment.schedule, x_T, SamplerConfig("ddim", 3))),
                               images[0], rtol=1e-4, atol=1e-4)


def test_a_failing_fused_network_falls_back_to_eager_with_a_message(tmp_path, capsys):
    model = _fusable_model(tmp_path)

    class Broken(torch.nn.Module):
        def forward(self, x, v):
            raise RuntimeError("no kernel for this card")

    x = torch.randn(2, 3, 16, 16)
    fast = Denoiser(runtime.sampling_network(model), "eps", model.normalization, None, fast=Broken())
    eager = Denoiser(runtime.sampling_network(model), "eps", model.normalization, None)
    for _ in range(2):  # the second call goes straight to eager
        torch.testing.assert_close(fast(x, 0.8, 0.6), eager(x, 0.8, 0.6))
    assert capsys.readouterr().err.count("no kernel for this card") == 1
    assert not fast.compiled


@pytest.mark.slow
@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_the_benchmark_sees_every_launch_of_a_call():
    """bench/bench_fused.py times what one call launches: two convolutions per residual block, a
    pooling per down level and an upsampling per up level, with their shapes and epilogues."""
    from bench import bench_fused
    config = UNetConfig(widths=(16, 32, 48), block_depth=2, image_size=8, embedding_dims=16)
    fused = FusedUNet(_network(config).float(), torch.float32)
    originals = (fc.fused_conv, fr.upsample2x, fr.avgpool2x)
    calls = bench_fused.record_calls(fused, torch.randn(2, 3, 8, 8), torch.rand(2))
    assert (fc.fused_conv, fr.upsample2x, fr.avgpool2x) == originals  # the spies are gone
    blocks = 2 * 2 + 2 + 2 * 2  # down, middle, up
    assert len(calls["conv"]) == 2 * blocks and len(calls["pool"]) == len(calls["upsample"]) == 2
    whats = [bench_fused.describe_launch(c) for c in calls["conv"]]
    # the first block reads the image (3 channels padded to 16: the stem is folded in) and gets the
    # noise embedding as a bias per image
    assert whats[0] == "8x8 3x3 16->16, bias table per image, silu"
    assert whats[1] == "8x8 3x3 16->16, 1x1 16, bias per image"
    assert whats[3] == "8x8 3x3 16->16, + residual"
    assert whats[-4] == "8x8 3x3 32+16->16, bias table, silu"  # an up block reads [x, skip] in place
    assert whats[-3] == "8x8 3x3 16->16, 1x1 32+16"
    assert whats[-2] == "8x8 3x3 16+16->16, bias table, silu"
    assert whats[-1] == "8x8 3x3 16->3, 1x1 16+16"  # the head folded in: the network's output
    convs = bench_fused.cudnn_convs(calls["conv"][-3])  # its cuDNN counterpart: 3x3 and 1x1 on the concatenation
    outs = [f() for f in convs]
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 8)] * 2


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_the_benchmark_runs_each_launch_with_its_tuned_tiles():
    from bench import bench_fused
    o = _operands(cb=16)
    packed = fc.pack_weights([o["w3a"], o["w3b"]], [])
    key = bench_fused.launch_key(o["x"], packed, o["bias"], skip=o["skip"])
    unusable = fc.Tiles(block_k=64)  # 64-channel chunks of a 16-channel input: refused, so visible
    real = fc.fused_conv
    with bench_fused.tiles_from({key: unusable}):
        with pytest.raises(ValueError, match="block_k=64"):
            fc.fused_conv(o["x"], packed, o["bias"], skip=o["skip"])
        out = fc.fused_conv(o["x"], packed[:9 * 32], o["bias"])  # another launch: the default tiles
    assert fc.fused_conv is real
    torch.testing.assert_close(out, fc.reference_conv(o["x"], [o["w3a"]], [], o["bias"]), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not fc.interpreting(), reason="needs TRITON_INTERPRET=1 before Triton's import")
def test_the_ab_tool_loads_an_earlier_revision_beside_the_current_modules(tmp_path):
    """bench/ab_fused.py: a revision's fused modules, extracted from git into a folder of any name,
    import as a package of their own (their imports of the rest of diffusion_core made absolute)
    and compute what the current network computes (HEAD here: the same code)."""
    import subprocess
    from pathlib import Path

    from bench import ab_fused
    from diffusion_core.fused import unet as fused_unet
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    base = ab_fused.extract("HEAD", tmp_path / ".ab-base", repo)
    assert "from diffusion_core.folding import" in (base / "unet.py").read_text()
    assert "from .conv import" in (base / "resample.py").read_text()  # its own, still relative
    old = ab_fused.load(base, package="ab_test_fused")
    assert old is not fused_unet and old.fc is not fc and old.fc.__name__ == "ab_test_fused.conv"
    config = UNetConfig(widths=(16, 32), block_depth=1, image_size=8, embedding_dims=16)
    net = _network(config)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    v = torch.rand(2, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(old.FusedUNet(net, torch.float64)(x, v), FusedUNet(net, torch.float64)(x, v))
    with pytest.raises(SystemExit, match="cannot read"):
        ab_fused.extract("no-such-revision", tmp_path / "x", repo)
    with pytest.raises(SystemExit, match="holds no extracted fused modules"):
        ab_fused.load(tmp_path / "empty")


@pytest.mark.slow
def test_the_sass_report_compiles_for_hopper_without_a_gpu():
    """bench/sass_report.py: Triton compiles the kernel for sm_90 on this CPU and its wheel's tools
    read the result: warpgroup MMAs in the flat tiles' loop, mma.sync in the 2-warp row tiles, a
    register count within the hardware's 255. (A process of its own: the tests run Triton's
    interpreter, which cannot compile.)"""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm").exists():
        pytest.skip("Triton's wheel carries no NVIDIA tools here")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "bench.sass_report", "--json", "--case", "flat-8x8-128-residual",
                        "rows-64"], capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    flat, rows = got["flat-8x8-128-residual"], got["rows-64"]
    assert flat["hgmma"] > 0 and flat["hmma"] == 0
    assert len(flat["loops"]) == 1 and flat["loops"][0]["hgmma"] > 0  # the 3x3 loop: 4 chunks x 9 taps
    assert 0 < flat["registers"] <= 255 and flat["shared_bytes"] > 0
    assert flat["instructions"] > sum(loop["instructions"] for loop in flat["loops"])
    assert rows["hmma"] > 0 and rows["hgmma"] == 0  # 2 warps: no warpgroup
    # under the interpreter the tool refuses, saying why
    r = subprocess.run([sys.executable, "-m", "bench.sass_report", "--case", "rows-64"], capture_output=True,
                       text=True, cwd=root, env=dict(env, TRITON_INTERPRET="1"), timeout=300)
    assert r.returncode != 0 and "unset it" in r.stderr


def test_the_ab_tool_reads_revisions_that_kept_the_fused_modules_in_diffusion_core():
    """Revisions before diffusion_core/fused/ held fused_conv.py, fused_resample.py, fused_unet.py
    beside the rest of the core: their sibling imports are renamed, the others made absolute."""
    from bench import ab_fused
    flat = ("from . import fused_conv as fc\nfrom . import fused_resample as fr\nfrom .folding import fold_batchnorm\n"
            "from .fused_conv import check_offsets\nfrom .unet import UNet\n")
    assert ab_fused.localize(flat, flat=True) == (
        "from . import conv as fc\nfrom . import resample as fr\nfrom diffusion_core.folding import fold_batchnorm\n"
        "from .conv import check_offsets\nfrom diffusion_core.unet import UNet\n")
    nested = "from ..folding import fold_batchnorm\nfrom . import conv as fc\nfrom .conv import interpreting\n"
    assert ab_fused.localize(nested, flat=False) == (
        "from diffusion_core.folding import fold_batchnorm\nfrom . import conv as fc\nfrom .conv import interpreting\n")
