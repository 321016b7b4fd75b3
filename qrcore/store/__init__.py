"""Stage 6, the store: one DuckDB file of models, datasets, runs, per-query sparse attributions and run-level
QRNCA results.

Callers use this package's names (`from qrcore import store`; `store.connect`, `store.heatmap`, ...); the modules
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
    done_query_ids,
    evaluations,
    finished_run,
    group_accuracy,
    has_template_ig,
    heatmap,
    heatmap_groups,
    list_runs,
    load_queries,
    neuron_card,
    overlap,
    qrnca_at,
    query_neurons,
    read_cluster_counts,
    read_common_neurons,
    read_layer_distribution,
    read_localisation,
    read_qr_neurons,
    read_template_consistency,
    require_model,
    run_dataset_id,
    run_groups,
    run_info,
    run_model,
    stored_rows,
)
from qrcore.store.top_queries import neuron_top_queries, read_top_queries, top_queries_done, write_top_queries
from qrcore.store.transfer import export_runs, exported_run_ids, has_runs, import_runs
from qrcore.store.writes import (
    finalize_run,
    get_or_create_run,
    replace_evaluations,
    store_run,
    upsert_dataset,
    upsert_model,
    write_evaluations,
    write_query,
    write_rows,
)

__all__ = [
    "connect",
    "default_db",
    "done_query_ids",
    "evaluations",
    "export_runs",
    "exported_run_ids",
    "finalize_run",
    "finished_run",
    "get_or_create_run",
    "group_accuracy",
    "has_runs",
    "has_template_ig",
    "heatmap",
    "heatmap_groups",
    "import_runs",
    "list_runs",
    "load_queries",
    "neuron_card",
    "neuron_top_queries",
    "overlap",
    "qrnca_at",
    "query_neurons",
    "read_cluster_counts",
    "read_common_neurons",
    "read_layer_distribution",
    "read_localisation",
    "read_qr_neurons",
    "read_template_consistency",
    "read_top_queries",
    "replace_evaluations",
    "require_model",
    "run_dataset_id",
    "run_groups",
    "run_info",
    "run_model",
    "RunInfo",
    "stored_rows",
    "store_run",
    "top_queries_done",
    "upsert_dataset",
    "upsert_model",
    "verify",
    "write_evaluations",
    "write_query",
    "write_rows",
    "write_top_queries",
    "writer_lock",
]
