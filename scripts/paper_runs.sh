#!/usr/bin/env bash
# The paper's own datasets run through QRNCA and every evaluation (README: "The paper's own data").
#   scripts/paper_runs.sh PAPER_DATA_DIR [MODEL] [PER_GROUP]    e.g. scripts/paper_runs.sh ../shared/paper-data smollm2 20
# Imports subject_qa.json and language_qa.json, runs PER_GROUP (default 20) queries of each group, evaluates all of
# them and writes the reports. Resumable: rerun after a kill. QRN_DB (default cache/paper.duckdb) holds the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/runs.sh
data=${1:?the folder that holds subject_qa.json and language_qa.json}
model=${2:-smollm2}
per_group=${3:-20}
export QRN_DB=${QRN_DB:-cache/paper.duckdb}
for set in subject language; do
    $qrn import "$data/${set}_qa.json" --name "paper-$set"
    run_and_evaluate "paper-$set-$(short_name "$model")" "$model" "paper-$set" --per-group "$per_group"
done
