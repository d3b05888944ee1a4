"""Regression values of the shipped checkpoints (``checkpoints/``), computed once on a CPU in float32
and written here as literals, so that a silent change to a checkpoint, the network or the sampling
math fails a test.

Tolerances, measured: float32 network outputs agree to 1.5e-6 across thread counts, memory
layouts, batch sizes and a float64 reference, so single outputs are pinned to 2e-5; scaling one
convolution's weights by 1.01 moves them by 2.5e-4 or more. A 5-step DDIM sample's per-channel
pixel mean is pinned to 1e-2 (one pixel rounding the other way moves it by 1e-4; the same 1.01
scaling moves it by 0.08 or more), single pixels to +-2.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.generate import generate
from diffusion_core.samplers import SamplerConfig

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
NETWORK_INPUT_SEED, NOISE_VARIANCE = 7, 0.5  # x ~ N(0, I) from this seed, at this noise level
OUTPUT_AT = [(0, 0, 0), (0, 17, 40), (1, 32, 5), (1, 60, 60), (2, 8, 50), (2, 63, 63)]  # (channel, y, x)
SAMPLE_SEEDS, SAMPLER = [0, 1], SamplerConfig("ddim", 5, 0.0)
PIXELS_AT = [(0, 5, 7), (0, 31, 20), (1, 12, 50), (1, 40, 9)]  # (image, y, x)

GOLDEN = {
    "ours2_eps": {
        "output_mean_abs": 1.080379605293274,
        "outputs": [-1.123560905456543, 0.02071995474398136, 0.9101961255073547, -2.3722963333129883,
                    0.13553324341773987, 1.6903129816055298],
        "channel_means": [146.9542236328125, 123.1224365234375, 100.2486572265625],
        "pixels": [[174, 142, 109], [148, 127, 101], [164, 135, 109], [173, 151, 128]],
    },
    "ddim_08": {
        "output_mean_abs": 1.0644031763076782,
        "outputs": [-1.0066663026809692, 0.0183373112231493, 1.0043538808822632, -1.5747740268707275,
                    -0.16201730072498322, 0.9635515213012695],
        "channel_means": [137.34953125, 115.3575, 100.95578125],
        "pixels": [[211, 204, 199], [181, 175, 177], [127, 66, 31], [158, 127, 98]],
    },
    "ddpm_01_narrow": {
        "output_mean_abs": 1.0415167808532715,
        "outputs": [-1.0937960147857666, 0.24501492083072662, 0.9940168261528015, -2.396969795227051,
                    0.1377183496952057, 1.5023518800735474],
        "channel_means": [146.28466796875, 110.3558349609375, 68.297119140625],
        "pixels": [[204, 118, 46], [177, 137, 64], [201, 135, 90], [168, 138, 104]],
    },
}


@pytest.fixture(scope="module", params=sorted(GOLDEN))
def shipped(request):
    """(name, model) of one shipped checkpoint, loaded once per module on the CPU in float32."""
    return request.param, load_checkpoint(CHECKPOINTS / f"{request.param}.json", "cpu")


def network_output(model) -> torch.Tensor:
    """The network's output [1 x C x S x S] at a fixed input and noise level."""
    net = model.experiment.network
    x = torch.randn(1, net.channels, net.image_size, net.image_size,
                    generator=torch.Generator().manual_seed(NETWORK_INPUT_SEED))
    with torch.no_grad():
        return model.network(x, torch.tensor([NOISE_VARIANCE]))


def test_network_output(shipped):
    name, model = shipped
    golden = GOLDEN[name]
    out = network_output(model)[0]
    assert out.abs().mean().item() == pytest.approx(golden["output_mean_abs"], rel=1e-5)
    assert [out[at].item() for at in OUTPUT_AT] == pytest.approx(golden["outputs"], abs=2e-5)


@pytest.mark.slow
def test_ddim_sample(shipped):
    name, model = shipped
    golden = GOLDEN[name]
    images = generate(model, SAMPLE_SEEDS, SAMPLER, autocast=None, compile=False)  # uint8 [2 x S x S x 3]
    size = model.experiment.network.image_size
    assert images.shape == (2, size, size, 3) and images.dtype == np.uint8
    assert images.astype(np.float64).mean(axis=(0, 1, 2)) == pytest.approx(golden["channel_means"], abs=1e-2)
    got = np.array([images[at] for at in PIXELS_AT], dtype=np.int64)
    assert np.abs(got - np.array(golden["pixels"])).max() <= 2, got.tolist()
