#!/usr/bin/env bash
# Set everything up from nothing, lint and type-check, and run the test suite tier by tier (unit, integration, app,
# slow), printing each tier's time; with arguments, pytest runs just those.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ]; then           # the browser test drives Debian's chromium through Playwright
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check . && .venv/bin/ruff format --check .   # lint, import order and format (pyproject.toml [tool.ruff])
.venv/bin/basedpyright -p pyproject.toml       # types, basic mode over qrcore, qrbench, explorer (pyproject.toml)
[ $# -eq 0 ] || exec .venv/bin/python -m pytest -q "$@"   # given arguments: just those tests
failed=0
tier() {  # name, then pytest's arguments: one tier of the suite, then its time
    local name=$1 start=$SECONDS
    shift
    .venv/bin/python -m pytest -q "$@" || failed=1
    echo "== $name tier: $((SECONDS - start)) s"
}
tier unit tests/unit -m "not slow and not integration"   # tiny inputs, no process or browser: under a minute
tier integration tests/unit tests/integration -m "integration and not slow"   # pipelines, processes, many forwards
tier app tests/app -m "not slow"                   # the explorer through streamlit's AppTest
tier slow tests -m slow                            # the real models, a browser, fault injection
exit $failed
