#!/usr/bin/env bash
# On the GPU machine: one line per run (last logged step, loss, images/s) and the GPU's load.
for out in runs/*.out; do
  name=$(basename "$out" .out)
  [ -d "runs/$name" ] || continue  # group and reference logs: scripts/gpu/wait.sh shows them
  last=$(tail -n 1 "runs/$name/log.jsonl" 2>/dev/null)
  alive=$(pgrep -f "runs/$name " >/dev/null && echo running || echo stopped)
  echo "$name [$alive] ${last:-no log yet} | $(tail -c 300 "$out" | tr '\r\n' '  ' | tail -c 160)"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
