"""Compiled sampling for long jobs: same images as eager, one compilation per network and batch
shape, an eager fallback when compiling fails, and the rule that decides when it pays."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion_core import generate as G
from diffusion_core import runtime
from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.cli import build_parser
from diffusion_core.model import Denoiser
from diffusion_core.samplers import SamplerConfig
from tests.helpers import make_tiny_checkpoint


@pytest.fixture
def model(tmp_path):
    return load_checkpoint(make_tiny_checkpoint(tmp_path))


@pytest.mark.slow
def test_compiled_generate_gives_the_eager_images_with_one_compile(model, monkeypatch):
    """aot_eager stands in for Inductor (whose C++ builds take minutes on a CPU); 5 seeds in
    chunks of 2 make two batch shapes, both through one compiled wrapper."""
    compiled, shapes = [], []
    real_compile = torch.compile

    def recording_compile(fn, **kwargs):
        compiled.append(kwargs)
        inner = real_compile(fn, backend="aot_eager", **kwargs)
        return lambda x, v: shapes.append(tuple(x.shape)) or inner(x, v)

    eager = G.generate(model, range(5), SamplerConfig("ddim", 4), compile=False)
    monkeypatch.setattr(G, "MAX_BATCH_PIXELS", 2 * 16 * 16)
    monkeypatch.setattr(torch, "compile", recording_compile)
    fast = G.generate(model, range(5), SamplerConfig("ddim", 4), compile=True)
    assert compiled == [{"dynamic": False}]
    assert shapes == [(2, 3, 16, 16)] * 8 + [(1, 3, 16, 16)] * 4
    assert fast.shape == eager.shape == (5, 16, 16, 3)
    assert np.abs(fast.astype(int) - eager.astype(int)).max() <= 1


def test_a_compile_that_fails_falls_back_to_eager_once(model, monkeypatch, capsys):
    def broken(x, v):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    eager = G.generate(model, range(3), SamplerConfig("ddim", 4), compile=False)
    fast = G.generate(model, range(3), SamplerConfig("ddim", 4), compile=True)
    np.testing.assert_array_equal(fast, eager)
    err = capsys.readouterr().err
    assert err.count("compiled sampling failed (RuntimeError: no C++ compiler); sampling eagerly") == 1


def _fake(device, size=64):
    """A model of this resolution on ``device`` (for ``runtime.runs_fused``, whose rule compile_pays uses)."""
    return SimpleNamespace(device=torch.device(device), network=None,
                           experiment=SimpleNamespace(network=SimpleNamespace(image_size=size)))


def test_compiling_pays_on_cuda_from_the_call_count(monkeypatch):
    """Network calls = batches x steps, a batch being MAX_BATCH_PIXELS of the model's resolution
    (256 images at 64 px); where the fused kernels cannot run, torch.compile's threshold."""
    monkeypatch.setattr(runtime, "fused_available", lambda network: False)

    ddim50, ddpm1000 = SamplerConfig("ddim", 50), SamplerConfig("ddpm", 1000)
    assert G._chunk_size(_fake("cuda")) == 256
    assert G.COMPILE_MIN_CALLS == 10_000
    assert not G.compile_pays(_fake("cuda"), 16, ddim50)  # a grid: 1 batch x 50 steps
    assert not G.compile_pays(_fake("cuda"), 2911, ddim50)  # the FID protocol: 12 x 50 = 600
    assert G.compile_pays(_fake("cuda"), 2911, ddpm1000)  # 12 x 1000
    assert not G.compile_pays(_fake("cuda"), 199 * 256, ddim50)  # 9,950 calls
    assert G.compile_pays(_fake("cuda"), 199 * 256 + 1, ddim50)  # 200 x 50 = 10,000
    assert not G.compile_pays(_fake("cuda", 128), 2911, ddim50)  # 64 per batch at 128 px: 46 x 50
    assert G.compile_pays(_fake("cuda", 128), 50_000, ddim50)  # 782 x 50
    assert not G.compile_pays(_fake("cpu"), 50_000, ddpm1000)  # never on a CPU


def test_compiling_pays_sooner_where_the_fused_kernels_run(monkeypatch):
    """The fused kernels' threshold, only for bf16 sampling (they have no float32 version)."""
    monkeypatch.setattr(runtime, "fused_available", lambda network: True)
    ddim50 = SamplerConfig("ddim", 50)
    assert G.FUSED_MIN_CALLS == 1_000
    assert not G.compile_pays(_fake("cuda"), 2911, ddim50)  # the FID protocol: 12 x 50 = 600
    assert not G.compile_pays(_fake("cuda"), 19 * 256, ddim50)  # 950 calls
    assert G.compile_pays(_fake("cuda"), 19 * 256 + 1, ddim50)  # 20 x 50 = 1,000
    assert not G.compile_pays(_fake("cuda"), 19 * 256 + 1, ddim50, autocast=None)  # float32: torch.compile's rule
    assert not G.compile_pays(_fake("cpu"), 50_000, ddim50)


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_cli_compile_flag(command):
    extra = ["--data", "d"] if command == "evaluate" else []
    parse = build_parser().parse_args
    assert parse([command, "m.json", *extra]).compile is None
    assert parse([command, "m.json", *extra, "--compile"]).compile is True
    assert parse([command, "m.json", *extra, "--no-compile"]).compile is False


def test_a_fused_network_that_cannot_be_built_leaves_the_folded_network_eager(tmp_path, monkeypatch, capsys):
    """Building the fused network fails (said once on stderr): compiled sampling runs the folded
    network eagerly, and the build is not tried again."""
    from diffusion_core.fused import unet as fused_unet
    builds = []

    def broken(network, dtype=torch.bfloat16):
        builds.append(network)
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(runtime, "fused_available", lambda network: True)
    monkeypatch.setattr(fused_unet, "FusedUNet", broken)
    model = load_checkpoint(make_tiny_checkpoint(tmp_path))
    x, variance = torch.randn(2, 3, 16, 16), torch.full((2,), 0.36)
    eager = Denoiser(runtime.sampling_network(model), "eps", model.normalization, torch.bfloat16)
    for _ in range(2):
        d = runtime.denoiser(model, torch.bfloat16, compile=True)
        assert d._forward is runtime.sampling_network(model) and not d.compiled
        torch.testing.assert_close(d.network_output(x, variance), eager.network_output(x, variance))
    assert len(builds) == 1
    err = capsys.readouterr().err
    assert err.count("building the fused sampling network failed (OutOfMemoryError: CUDA out of memory)") == 1
