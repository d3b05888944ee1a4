#!/usr/bin/env bash
# Training step of the reference network (64px, batch 64 and 256, compiled) under torch.compile's
# default mode and "reduce-overhead" (CUDA graphs), one process each, same card, back to back.
# Tables go to stdout, JSON to $OUT/bench_default.json and $OUT/bench_reduce-overhead.json.
#   OUT=res/bench bash bench/compile_modes.sh          # about 2 minutes on one H200 (4 compilations)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}; mkdir -p "$out"
for mode in default reduce-overhead; do
  flag=(--compile-mode "$mode")  # explicit: without it the Trainer picks reduce-overhead on CUDA
  OUT=$(mktemp -d) sh -c 'python3 -m bench.bench_train "$@" && cp "$OUT/bench.json" "'"$out/bench_$mode.json"'"' _ \
    --only "64px [32,64,96,128] d2, batch 256, compiled" "64px [32,64,96,128] d2, batch 64, compiled" "${flag[@]}" "$@"
done
