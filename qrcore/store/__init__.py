"""Stage 6, the store: one DuckDB file of models, datasets, runs, per-query sparse attributions and run-level
QRNCA results. It only reads and writes rows: it imports no stage that computes (attribution, selection, editing);
`qrcore.runs.storing` computes what it writes and `qrcore.evaluation.run_analyses` what is drawn from its rows.

Callers use this package's names (`from qrcore import store`; `store.connect`, `store.qr_neurons`, ...); the modules
behind them each do one job:
- `schema`: tables, schema version, migrations built in a temporary copy;
- `connection`: opening, creating, upgrading and refusing files, the writer lock of a run;
- `sql`: transactions and DataFrame-bound statements;
- `writes`, `reads`: writers, and readers for the command line and the explorer;
- `top_queries`: each neuron's queries of the highest activation;
- `transfer`: runs as Parquet files; `shipped`: the runs shipped with the package.

All SQL is in module constants; values are bound with `?` or come from a registered DataFrame.
"""

from qrcore.store.connection import connect, default_db, verify, writer_lock
from qrcore.store.reads import (
    RunInfo,
    attribution_rows,
    cluster_counts,
    common_neuron_counts,
    complete_run,
    done_query_ids,
    evaluations,
    group_accuracy,
    has_template_ig,
    heatmap_groups,
    heatmap_rows,
    list_runs,
    load_queries,
    neuron_rows,
    qr_neurons,
    query_rows,
    require_model,
    run_dataset_id,
    run_groups,
    run_info,
    run_model,
    run_with_results,
    stored_rows,
    top_activation_rows,
)
from qrcore.store.top_queries import neuron_top_queries, read_top_queries, top_queries_done, write_top_queries
from qrcore.store.transfer import export_runs, exported_run_ids, has_runs, import_runs
from qrcore.store.writes import (
    get_or_create_run,
    replace_evaluations,
    store_run,
    upsert_dataset,
    upsert_model,
    write_evaluations,
    write_rows,
    write_run_results,
)

__all__ = [
    "attribution_rows",
    "cluster_counts",
    "common_neuron_counts",
    "complete_run",
    "connect",
    "default_db",
    "done_query_ids",
    "evaluations",
    "export_runs",
    "exported_run_ids",
    "get_or_create_run",
    "group_accuracy",
    "has_runs",
    "has_template_ig",
    "heatmap_groups",
    "heatmap_rows",
    "import_runs",
    "list_runs",
    "load_queries",
    "neuron_rows",
    "neuron_top_queries",
    "qr_neurons",
    "query_rows",
    "replace_evaluations",
    "require_model",
    "run_dataset_id",
    "run_groups",
    "run_info",
    "run_model",
    "read_top_queries",
    "run_with_results",
    "RunInfo",
    "store_run",
    "top_queries_done",
    "stored_rows",
    "top_activation_rows",
    "upsert_dataset",
    "upsert_model",
    "verify",
    "write_evaluations",
    "write_rows",
    "write_top_queries",
    "write_run_results",
    "writer_lock",
]
