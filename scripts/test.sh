#!/usr/bin/env bash
# Set everything up from nothing and run the whole test suite (fast tests, the real model, the browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ]; then           # the browser test drives Debian's chromium through Playwright
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check . && .venv/bin/ruff format --check .   # lint, import order and format (pyproject.toml [tool.ruff])
exec .venv/bin/python -m pytest -q "$@"
