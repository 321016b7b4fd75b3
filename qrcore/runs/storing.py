"""A query's rows and a run's results into the store: computed by the selection stage, written by the store."""

from __future__ import annotations

import duckdb
import pandas as pd

from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.selection import qrnca
from qrcore.settings import QRNCASettings


def write_query(con: duckdb.DuckDBPyConnection, run_id: str, attr: QueryAttribution, settings: QRNCASettings) -> None:
    """Store one query's result, sparse attributions (`qrnca.sparsify` with the run's settings) and top activations."""
    results = pd.DataFrame(
        {
            "query_id": [attr.query_id],
            "correct_prob": [attr.correct_prob],
            "accuracy": [attr.accuracy],
            "seconds": [attr.seconds],
        }
    )
    store.write_rows(con, run_id, results, qrnca.sparsify(attr, settings), qrnca.top_activations(attr))


def finalize_run(con: duckdb.DuckDBPyConnection, run_id: str, seed: int = 0) -> None:
    """Compute the run's neuron stats, QR neurons of every method and group heatmaps, and mark it finished.

    |C| is the number of done queries. The numbers are computed first (seconds for 10,000 queries), then
    written in one transaction that replaces earlier ones. `seed` seeds the random baseline.
    """
    info = store.run_info(con, run_id)
    groups = store.run_groups(con, info.run_id)
    sparse, top = store.attribution_rows(con, info.run_id), store.top_activation_rows(con, info.run_id)
    results = qrnca.run_results(sparse, top, groups, info.settings.qrnca, (info.n_layers, info.n_neurons), seed)
    store.write_run_results(con, info.run_id, results.stats, results.qr, results.heatmaps, len(groups))
