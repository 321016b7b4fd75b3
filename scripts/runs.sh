# Shared by ship_runs.sh and paper_runs.sh (sourced, not run): the qrn command and one resumable run with its
# evaluations and report.
qrn=".venv/bin/python -m qrcore.cli"

# short_name MODEL: the model's name in run names (smollm2, qwen2 ...).
short_name() {
    local short=${1%%-*}
    echo "${short%%.*}"
}

# run_and_evaluate NAME MODEL DATASET [more qrn run options]: the run (a rerun resumes it), every evaluation not yet
# stored, and the report under cache/reports/NAME. With SHARDS set, the run also writes a shard per finished query
# under it (qrn run --shards), so that a copy of that folder resumes the run on another machine.
run_and_evaluate() {
    local name=$1 model=$2 dataset=$3
    shift 3
    $qrn run --model "$model" --dataset "$dataset" --name "$name" ${SHARDS:+--shards "$SHARDS"} "$@"
    $qrn evaluate --model "$model" --run "$name" --if-missing
    $qrn report --run "$name"
}
