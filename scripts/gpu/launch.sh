#!/usr/bin/env bash
# On the GPU machine: start training runs in the background (setsid, so they outlive the call),
# each stopping and saving by itself after TIME_LIMIT seconds. Logs: runs/NAME/log.jsonl and
# runs/NAME.out. Usage: bash scripts/gpu/launch.sh DATA TIME_LIMIT NAME [NAME ...]
set -euo pipefail
data=$1; limit=$2; shift 2
mkdir -p runs
for spec in "$@"; do
  name=${spec%@*}; gpu=0
  [ "$spec" != "$name" ] && gpu=${spec#*@}
  CUDA_VISIBLE_DEVICES=$gpu setsid nohup python3 -m diffusion_core train "experiments/$name.toml" --data "$data" --out "runs/$name" \
    --device cuda --compile --quiet --time-limit "$limit" --cache-dir .cache/data \
    > "runs/$name.out" 2>&1 < /dev/null &
  echo "started $name on GPU $gpu (pid $!)"
done
