"""Where the data set is: FID/KID of sample features made on the GPU by sample_features.py (one
.npz per seed range) against the real images' features, computed here with the same FID weights;
optionally recorded in a checkpoint description.

    python scripts/gpu/finish_table.py part0.npz part1.npz ... --data data/bedrooms-128.tar \
        --size 64 --fid-weights .fid-cache/fid-inception-2015-12-05-fp16.safetensors \
        [--record results/descriptions/ours2_eps.json --device-name "NVIDIA H100 80GB HBM3"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sample_features, beside this file

import numpy as np
from sample_features import config_of

from diffusion_core.data import load_image_set
from diffusion_core.evaluation import cached_features, evaluation_record, record_result
from diffusion_core.fid import fid_from_features, load_feature_extractor


def gather(parts: list[str]) -> dict[str, np.ndarray]:
    """Features per sampler setting, rows in seed order; every seed exactly once."""
    loaded = [np.load(p, allow_pickle=False) for p in parts]
    seeds = np.concatenate([z["seeds"] for z in loaded])
    if len(np.unique(seeds)) != len(seeds):
        raise ValueError("the parts overlap: a seed appears twice")
    order = np.argsort(seeds)
    keys = set.intersection(*(set(z.files) - {"seeds"} for z in loaded))
    return {k: np.concatenate([z[k] for z in loaded]).astype(np.float64)[order] for k in sorted(keys)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--fid-weights", required=True)
    p.add_argument("--cache-dir", default=".cache/fid")
    p.add_argument("--record", help="checkpoint description (.json) that gets the results")
    p.add_argument("--device-name", default="GPU", help="where the samples were made, for the record")
    args = p.parse_args()
    extractor = load_feature_extractor(args.fid_weights, "cpu", batch_size=100)
    real = load_image_set(args.data, args.size, cache_dir=".cache/data")
    real_feats = cached_features(real.images, real.name, extractor, args.cache_dir)
    for key, feats in gather(args.parts).items():
        config = config_of(key)
        r = fid_from_features(feats, real_feats, kid_subset_size=min(1000, len(feats), len(real_feats)),
                              method="eigh")
        print(f"{key}: FID {r['fid']:.2f} KID {r['kid']:.4f} ({len(feats)} samples)", flush=True)
        if args.record:
            how = (f"samples and their features (fp16) on {args.device_name} from the shipped fp16 weights; "
                   "real features and distances on the CPU (scripts/gpu/finish_table.py)")
            record = evaluation_record(r, config, f"{real.name} at {args.size}px", extractor.weights_id)
            record_result(args.record, record | {"how": how}, protocol=False)


if __name__ == "__main__":
    main()
