#!/usr/bin/env bash
# The paper's own datasets run through QRNCA and every evaluation (README: "The paper's own data").
#   scripts/paper_runs.sh PAPER_DATA_DIR [MODEL] [PER_GROUP]    e.g. scripts/paper_runs.sh ../shared/paper-data smollm2 20
# Imports subject_qa.json and language_qa.json, runs PER_GROUP (default 20) queries of each group, evaluates all of
# them, computes the perturbed runs of STABILITY_PER_GROUP (default 5) queries of each group (qrn stability) and
# writes the reports. Resumable: rerun after a kill. QRN_DB (default cache/paper.duckdb) holds the runs; SHARDS
# (default runs/paper, tracked by git) a shard of every finished query, so a copy of that folder resumes the runs on
# another machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/runs.sh
data=${1:?the folder that holds subject_qa.json and language_qa.json}
model=${2:-smollm2}
per_group=${3:-20}
export QRN_DB=${QRN_DB:-cache/paper.duckdb}
SHARDS=${SHARDS:-runs/paper}
for set in subject language; do
    $qrn import "$data/${set}_qa.json" --name "paper-$set"
    name="paper-$set-$(short_name "$model")"
    run_and_evaluate "$name" "$model" "paper-$set" --per-group "$per_group"
    $qrn stability --run "$name" --model "$model" --per-group "${STABILITY_PER_GROUP:-5}"
    $qrn report --run "$name"
done
