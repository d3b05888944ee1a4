#!/usr/bin/env bash
# Set up (first time) and start the explorer app on the shipped checkpoints.
# Extra arguments go to streamlit, e.g.: bash scripts/app.sh --server.port 8600
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m streamlit run app.py "$@"
