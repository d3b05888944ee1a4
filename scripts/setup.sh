#!/usr/bin/env bash
# Create .venv (once) and install the requirements into it. Used by app.sh and test.sh.
# Set PYTHON to choose the interpreter (default python3, 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt "$@"
