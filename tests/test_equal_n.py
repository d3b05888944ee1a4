"""FID / floor at equal N (evaluation.equal_n_comparison) on synthetic features."""

import numpy as np
import pytest

from diffusion_core.evaluation import equal_n_comparison, real_halves, real_vs_real_floor
from diffusion_core.fid import fid_from_features


def _gauss(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


def test_halves_are_disjoint_and_cover_the_set():
    a, b = real_halves(11, 3)
    assert len(a) == 5 and len(b) == 6
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(11))


def test_split_zero_floor_is_the_protocol_floor():
    real = _gauss(400, 8, 0)
    samples = _gauss(400, 8, 1)
    r = equal_n_comparison(samples, real, splits=1, frechet="eigh")
    assert r["floor_fid"] == pytest.approx(real_vs_real_floor(real, seed=0, frechet="eigh")["fid"], abs=1e-3)
    assert (r["num_samples"], r["num_reference"]) == (200, 200)


@pytest.mark.slow
def test_same_distribution_gives_ratio_near_one_and_a_shift_raises_it():
    real = _gauss(1000, 8, 0)
    same = equal_n_comparison(_gauss(1000, 8, 1), real, splits=3, frechet="eigh")
    shifted = equal_n_comparison(_gauss(1000, 8, 2, shift=0.5), real, splits=3, frechet="eigh")
    assert 0.6 < same["ratio"] < 1.6
    # a mean shift of 0.5 in 8 dimensions adds 8 * 0.25 = 2 to the Frechet distance
    assert shifted["fid"] - same["fid"] == pytest.approx(2.0, abs=0.5)
    assert shifted["ratio"] > 3 * same["ratio"]


def test_model_side_uses_the_same_sizes_as_the_floor():
    real = _gauss(301, 4, 0)
    samples = _gauss(500, 4, 1)
    r = equal_n_comparison(samples, real, splits=2, frechet="eigh")
    # recompute split 1 by hand: 150 samples (seeded pick) against the 151-image half
    a, b = real_halves(301, 1)
    pick = np.random.default_rng(10_001).permutation(500)[:150]
    by_hand = [fid_from_features(samples[np.random.default_rng(10_000).permutation(500)[:150]],
                                 real[real_halves(301, 0)[1]], kid_subset_size=150, method="eigh")["fid"],
               fid_from_features(samples[pick], real[b], kid_subset_size=150, method="eigh")["fid"]]
    assert r["fid"] == pytest.approx(np.mean(by_hand), abs=1e-3)
    assert len(a) == 150


def test_too_few_samples_is_refused_with_the_number():
    with pytest.raises(ValueError, match="at least 50 samples"):
        equal_n_comparison(_gauss(10, 4, 0), _gauss(100, 4, 1))
