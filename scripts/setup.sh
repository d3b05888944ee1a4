#!/usr/bin/env bash
# Create .venv (once) and install the requirements into it. Used by app.sh and test.sh.
# Set PYTHON to choose the interpreter (default python3, 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    found=$(command -v "$PY" >/dev/null && "$PY" --version 2>&1 || echo "not found")
    echo "Python 3.10 or newer is needed, and $PY is $found; choose one with PYTHON=python3.x" >&2
    exit 1
  fi
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt "$@"
