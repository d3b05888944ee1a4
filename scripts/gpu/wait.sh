#!/usr/bin/env bash
# On the GPU machine: wait up to SECONDS for the pipeline's groups (scripts/gpu/pipeline.sh) to end
# and print each run's state. With OUT=FOLDER, also pack res/ into FOLDER as res.tar.* parts of
# 15 MiB once a group has finished, to copy back in pieces (unpack: cat res.tar.* | tar xf -).
#   bash scripts/gpu/wait.sh 540
max=${1:-540}
start=$(date +%s)
groups=$(ls runs/group_*.out 2>/dev/null | wc -l)
while [ $(( $(date +%s) - start )) -lt "$max" ]; do
  done_=$(ls runs/group_*.done 2>/dev/null | wc -l)
  [ "$groups" -gt 0 ] && [ "$done_" -ge "$groups" ] && break
  sleep 10
done
bash "$(dirname "$0")/status.sh"
for f in runs/group_*.out runs/reference.out; do
  [ -f "$f" ] && { echo "== $f"; tail -n 6 "$f" | cut -c1-300; }
done
echo "groups finished: $(ls runs/group_*.done 2>/dev/null | wc -l) of $groups"
if [ -n "${OUT:-}" ] && ls runs/group_*.done >/dev/null 2>&1; then
  tar cf - res | split -b 15M - "$OUT/res.tar."
  ls -la "$OUT"
fi
