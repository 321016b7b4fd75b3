#!/usr/bin/env bash
# Compute the shipped runs resumably and export them into qrcore/data/default_runs.
#   scripts/ship_runs.sh MODEL [MODEL ...]    e.g. scripts/ship_runs.sh qwen2.5-coder-1.5b smollm2
# Every built-in query of both sets, then every evaluation on all of them. A killed script loses at most the
# query or evaluation in flight: rerun it. QRN_DB (default cache/ship.duckdb) holds the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/runs.sh
export QRN_DB=${QRN_DB:-cache/ship.duckdb}
runs=()
for model in "$@"; do
    for dataset in domain language; do
        name="$dataset-$(short_name "$model")"
        run_and_evaluate "$name" "$model" "$dataset"
        runs+=(--run "$name")
    done
done
$qrn export "${runs[@]}" --out qrcore/data/default_runs
