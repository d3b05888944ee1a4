#!/usr/bin/env bash
# Set up (first time) and run the whole test suite on CPU. Extra arguments go to pytest
# (-m "not slow": the fast tier only).
# The browser test needs Debian's chromium; it is installed here when running as root with apt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser test will be skipped"
fi
exec .venv/bin/python -m pytest -q tests "$@"
