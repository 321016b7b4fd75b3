#!/usr/bin/env bash
# Compute the shipped runs resumably and export them into qrcore/data/default_runs.
#   scripts/ship_runs.sh MODEL [MODEL ...]    e.g. scripts/ship_runs.sh qwen2.5-coder-1.5b smollm2
# Every built-in query of both sets (or DOMAIN_PER_GROUP / LANGUAGE_PER_GROUP of each group), then every evaluation
# on all of them. A killed script loses at most the query in flight (of a run or an evaluation): rerun it.
# QRN_DB (default cache/ship.duckdb) holds the runs, starting from the ones already shipped (a run computed under the
# same settings and code is not computed again); SHARDS (default runs/, tracked by git) holds a shard of every
# finished query, so a run that takes longer than one machine's life is committed as it goes and resumed elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/runs.sh
export QRN_DB=${QRN_DB:-cache/ship.duckdb}
SHARDS=${SHARDS:-runs}
$qrn import qrcore/data/default_runs
runs=()
for dataset in domain language; do  # every model's domain run before the language runs: they ship in that order
    for model in "$@"; do
        name="$dataset-$(short_name "$model")"
        per_group=$([ "$dataset" = domain ] && echo "${DOMAIN_PER_GROUP:-}" || echo "${LANGUAGE_PER_GROUP:-}")
        run_and_evaluate "$name" "$model" "$dataset" ${per_group:+--per-group "$per_group"}
        runs+=(--run "$name")
    done
done
$qrn export "${runs[@]}" --out qrcore/data/default_runs
