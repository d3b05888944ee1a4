#!/usr/bin/env bash
# Every benchmark in ONE process on one card (training, sampling, peers, quality checks), ONE
# table at the end, also as JSON in $OUT/bench.json when $OUT is set. Run from anywhere:
#   bash bench/run_gpu.sh                       # one H100: about 8 minutes, half of it compiling
#   bash bench/run_gpu.sh --quick --device cpu  # smoke test of every code path
# Peers are imported when installed (pip install diffusers denoising-diffusion-pytorch); wheels in
# .device-wheels/ are installed into a side folder first (no index needed, for an offline machine).
# A peer that cannot be installed or imported is reported as "unavailable: <reason>" in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${BENCH_PEER_SITE:-/tmp/bench-peer-site}
if compgen -G ".device-wheels/*.whl" >/dev/null; then
  echo "installing peer wheels into $SITE" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade \
    --target "$SITE" .device-wheels/*.whl \
    || echo "peer wheels did not install; the peers will be reported unavailable" >&2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" -c 'import sys; from bench import bench_train, bench_sample, common
common.main([bench_train.cases, bench_sample.cases], sys.argv[1:])' "$@"
