#!/usr/bin/env bash
# The CIFAR-10 run on one GPU, start to finish: train experiments/cifar10.toml for TIME_LIMIT seconds,
# keeping the model of every save (train.checkpoint_every and the time limit) as a snapshot; then the
# steps table at N = 50,000 against the 50,000 training images (collect.py --table-configs cifar: FID,
# KID, near copies and the floor at equal N for DDIM 50), FID against GPU-minutes from the snapshots
# (curve.py, at CURVE_N samples each) and the table beside the DDIM paper's (results_table.py --cifar).
#
#   bash scripts/gpu/cifar.sh DATA FID_WEIGHTS TIME_LIMIT
#
# Environment: DEVICE (default cuda; cpu for a rehearsal), CONFIG (default experiments/cifar10.toml),
# RUNS (default runs), OUT (default res/cifar), CURVE_N (default 10000), CURVE_POINTS (default 6),
# TRAIN_EXTRA and COLLECT_EXTRA (more flags, e.g. "--max-steps 2" and "--num-samples 256").
# Writes OUT/checkpoints/NAME.* (fp16 weights, measured description with the curve), OUT/results_cifar.json,
# OUT/curve_NAME.json and OUT/table_NAME.md; the run itself stays in RUNS/NAME (resumable).
set -euo pipefail
data=$1; weights=$2; limit=$3
device=${DEVICE:-cuda}; config=${CONFIG:-experiments/cifar10.toml}; runs=${RUNS:-runs}; out=${OUT:-res/cifar}
name=$(python3 -c "import sys; from diffusion_core.config import load_experiment; print(load_experiment(sys.argv[1]).name)" "$config")
compile=""; [ "$device" = cuda ] && compile="--compile"
mkdir -p "$runs" "$out"
export PYTHONUNBUFFERED=1
t0=$SECONDS
python3 -m diffusion_core train "$config" --data "$data" --out "$runs/$name" --device "$device" $compile --quiet \
  --time-limit "$limit" --keep-snapshots --cache-dir .cache/data ${TRAIN_EXTRA:-}
echo "[cifar] trained in $(( SECONDS - t0 )) s"; t0=$SECONDS
python3 scripts/gpu/collect.py --data "$data" --fid-weights "$weights" --out "$out" --tag cifar --runs "$runs" \
  --only "$name" --table "$name" --table-configs cifar --ship "$name" --device "$device" ${COLLECT_EXTRA:-}
echo "[cifar] steps table in $(( SECONDS - t0 )) s"; t0=$SECONDS
python3 scripts/gpu/curve.py "$runs/$name" --data "$data" --fid-weights "$weights" --num-samples "${CURVE_N:-10000}" \
  --points "${CURVE_POINTS:-6}" --device "$device" --out "$out/curve_$name.json" --record "$out/checkpoints/$name.json"
echo "[cifar] curve in $(( SECONDS - t0 )) s"
python3 scripts/results_table.py --cifar "$out/checkpoints/$name.json" | tee "$out/table_$name.md"
