#!/usr/bin/env bash
# Create .venv (once) and install the requirements into it. Used by app.sh and test.sh.
# Set PYTHON to choose the interpreter (default python3, 3.10 or newer).
# TORCH_CPU=1 installs the CPU-only torch build (from the PyTorch CPU index, about 200 MB) instead of
# the default one, which on Linux x86_64 is a CUDA build of several GB; it applies when torch is
# not yet in .venv (delete .venv to switch).
# Extra arguments go to pip install (test.sh passes -r requirements-dev.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    found=$(command -v "$PY" >/dev/null && "$PY" --version 2>&1 || echo "not found")
    echo "Python 3.10 or newer is needed, and $PY is $found; choose one with PYTHON=python3.x" >&2
    exit 1
  fi
  echo "setup: creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
# pip's own lines (what it downloads and installs) are shown as they come, less the ones for what
# is already there
pip_install() {
  PYTHONUNBUFFERED=1 .venv/bin/python -m pip install --disable-pip-version-check "$@" 2>&1 |
    while IFS= read -r line; do
      case "$line" in "Requirement already satisfied"*) ;; *) printf '%s\n' "$line" ;; esac
    done
}
has_torch() { .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; }
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${TORCH_CPU:-0}" = 1 ] && ! has_torch; then
  echo "setup: installing the CPU-only torch build from https://download.pytorch.org/whl/cpu"
  pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi
if ! has_torch; then
  echo "setup: installing torch (the first time: a download of up to 2.5 GB, several minutes; TORCH_CPU=1 for the small CPU-only build)"
fi
echo "setup: installing requirements.txt${*:+ and $*} into .venv"
pip_install -r requirements.txt "$@"
echo "setup: .venv is ready (.venv/bin/python)"
