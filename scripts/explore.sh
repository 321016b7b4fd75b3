#!/usr/bin/env bash
# Set up (first time only takes long) and open the explorer on http://localhost:8501 with the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/qrn explore "$@"
