import math

import pytest
import torch

from diffusion_core.interpolation import interpolate, lerp, slerp
from diffusion_core.samplers import seed_noise


def test_slerp_keeps_gaussian_norm_statistics_and_lerp_does_not():
    z = seed_noise([1, 2], (3, 64, 64))  # d = 12288: norms concentrate at sqrt(d)
    d = z[0].numel()
    mid_s = slerp(z[:1], z[1:], 0.5)[0]
    mid_l = lerp(z[0], z[1], 0.5)
    assert mid_s.norm().item() / math.sqrt(d) == pytest.approx(1.0, abs=0.02)
    assert mid_s.std().item() == pytest.approx(1.0, abs=0.02)
    # two independent Gaussian vectors are nearly orthogonal: the midpoint of the line has norm / sqrt(2)
    assert mid_l.norm().item() / math.sqrt(d) == pytest.approx(1 / math.sqrt(2), abs=0.02)


def test_slerp_endpoints_and_angle():
    z0, z1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(slerp(z0, z1, 0.0), z0) and torch.allclose(slerp(z0, z1, 1.0), z1)
    mid = slerp(z0, z1, 1 / 3)[0]
    assert torch.allclose(mid, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_parallel_falls_back_to_lerp():
    z = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(slerp(z, 2 * z, 0.5), 1.5 * z)


def test_interpolate_frames_through_keys():
    keys = seed_noise([0, 1, 2], (3, 8, 8))
    path = interpolate(keys, 9, "slerp")
    assert path.shape == (9, 3, 8, 8)
    assert torch.allclose(path[0], keys[0]) and torch.allclose(path[4], keys[1], atol=1e-6)
    assert torch.allclose(path[-1], keys[2], atol=1e-6)
    assert torch.allclose(interpolate(keys[:2], 3, "lerp")[1], (keys[0] + keys[1]) / 2)


def test_interpolate_errors():
    keys = seed_noise([0, 1], (3, 8, 8))
    with pytest.raises(ValueError, match="at least two"):
        interpolate(keys[:1], 4)
    with pytest.raises(ValueError, match="frames"):
        interpolate(keys, 1)
    with pytest.raises(ValueError, match="slerp or lerp"):
        interpolate(keys, 4, "cubic")
