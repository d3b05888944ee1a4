#!/usr/bin/env bash
# On the GPU machine, one command for a whole training-and-measuring job: per GPU, train a group of
# runs side by side (each stops and saves by itself after TIME_LIMIT seconds), then measure that
# group with collect.py into res/gG; meanwhile one process caches the real images' FID features and
# floors. Everything runs detached (setsid): the command returns at once and the jobs survive a
# closed terminal; scripts/gpu/status.sh and scripts/gpu/wait.sh watch them (scripts/gpu/README.md).
#
#   SHIP="ours ddim_08" TABLE="ours" bash scripts/gpu/pipeline.sh DATA TIME_LIMIT FID_WEIGHTS \
#       0=ours 1=ddim_08 3=ddim_01,ddim_03
#
# A group with no runs ("3=") only runs its AFTER_G command (e.g. a benchmark on a spare GPU);
# runs/reference.pid holds the feature-caching process, so that command can wait for it first.
# Environment: SHIP (runs whose fp16 weights come back), TABLE (runs that get the steps table),
# REF_SIZES (resolutions whose real features are cached first, e.g. "64 80 128"), REF_GPU,
# DEVICE (default cuda; cpu for a rehearsal), TRAIN_EXTRA / COLLECT_EXTRA (more flags),
# AFTER_G (a command run on GPU G once its group is measured, e.g. a benchmark).
# A run may have its own time limit: 1=ddim_08:1000. Several groups may share a GPU: 0=a,b 0.1=c
# (each group is measured as soon as its own runs have finished).
set -euo pipefail
data=$1; limit=$2; weights=$3; shift 3
device=${DEVICE:-cuda}
compile=""; [ "$device" = cuda ] && compile="--compile"
mkdir -p runs res
# CPU threads per group: numpy/torch default to every core in every process; three collect.py
# processes at once on a 64-core host (192 threads each, load 155) take 1.5-2 minutes per evaluation
# instead of seconds, from oversubscribed thread pools (scripts/gpu/README.md)
threads=$(( $(nproc) / ($# + 1) )); [ "$threads" -lt 1 ] && threads=1
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
declare -A AFTER
for var in ${!AFTER_*}; do AFTER[${var#AFTER_}]=${!var}; done
if [ -n "${REF_SIZES:-}" ]; then
  CUDA_VISIBLE_DEVICES=${REF_GPU:-0} setsid nohup python3 scripts/gpu/collect.py --data "$data" --fid-weights "$weights" \
    --out res/reference --tag reference --reference-sizes $REF_SIZES --device "$device" \
    > runs/reference.out 2>&1 < /dev/null &
  echo $! > runs/reference.pid
  echo "caching real features at ${REF_SIZES}px on GPU ${REF_GPU:-0} (pid $!)"
fi
for spec in "$@"; do
  key=${spec%%=*}; gpu=${key%%.*}; names=${spec#*=}; names=${names//,/ }  # 0.1=...: a second group on GPU 0
  script="set -u"$'\n'"export CUDA_VISIBLE_DEVICES=$gpu PYTHONUNBUFFERED=1"
  runs=""
  for spec_name in $names; do
    name=${spec_name%%:*}; run_limit=${spec_name#*:}; [ "$run_limit" = "$spec_name" ] && run_limit=$limit
    runs+=" $name"
    script+=$'\n'"python3 -m diffusion_core train experiments/$name.toml --data '$data' --out runs/$name --device $device \
$compile --quiet --time-limit $run_limit --cache-dir .cache/data ${TRAIN_EXTRA:-} > runs/$name.out 2>&1 &"
  done
  collect="python3 scripts/gpu/collect.py --data '$data' --fid-weights '$weights' --out res/g$key --tag g$key \
--only$runs --ship ${SHIP:-} --table ${TABLE:-} --device $device ${COLLECT_EXTRA:-}"
  [ -n "$runs" ] && script+=$'\n'"wait"$'\n'"$collect"
  script+=$'\n'"${AFTER[$gpu]:-}"$'\n'"touch runs/group_$key.done"
  setsid nohup bash -c "$script" > "runs/group_$key.out" 2>&1 < /dev/null &
  echo "GPU $gpu, group $key:$runs (pid $!)"
done
