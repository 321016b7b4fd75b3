"""A run's figures and tables computed from its stored rows (`qrcore.store` reads, the selection stage computes):
Fig. 5 heatmaps, Fig. 2 overlap and layer shares, localisation, common neurons, one query's neurons, QRNCA at other
thresholds, template consistency, contrasts of two groups and neuron cards. Nothing is written."""

from __future__ import annotations

from typing import cast

import duckdb
import numpy as np
import pandas as pd

from qrcore import store
from qrcore.errors import QRNError
from qrcore.selection import analysis, card, consistency, contrast, live, qrnca


def heatmap(con: duckdb.DuckDBPyConnection, run_id: str, group: str) -> np.ndarray:
    """Fig. 5: the (layers, neurons) float32 map of NAICA summed over the group's queries."""
    info = store.run_with_results(con, run_id)
    return analysis.to_dense(store.heatmap_rows(con, info.run_id, group), info.n_layers, info.n_neurons)


def overlap(con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca") -> pd.DataFrame:
    """Fig. 2a: group x group Jaccard overlap of the groups' QR neurons (`analysis.overlap_matrix`)."""
    info = store.run_with_results(con, run_id)
    return analysis.overlap_matrix(store.qr_neurons(con, info.run_id, method), store.run_groups(con, info.run_id))


def layer_distribution(con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca") -> pd.DataFrame:
    """Fig. 2b: per group, the share of its QR neurons in each layer (`analysis.layer_distribution`)."""
    info = store.run_with_results(con, run_id)
    qr, groups = store.qr_neurons(con, info.run_id, method), store.run_groups(con, info.run_id)
    return analysis.layer_distribution(qr, groups, info.n_layers)


def localisation(con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca") -> dict[str, float]:
    """How concentrated the run's QR neurons are (`analysis.localisation`)."""
    info = store.run_with_results(con, run_id)
    qr, groups = store.qr_neurons(con, info.run_id, method), store.run_groups(con, info.run_id)
    return analysis.localisation(qr, groups, info.n_layers, info.n_neurons)


def group_contrast(
    con: duckdb.DuckDBPyConnection, run_id: str, pair: contrast.Pair, by: contrast.ContrastScore = "naica"
) -> pd.DataFrame:
    """The neurons that separate two groups of a run, most separating first (`contrast.contrast` of its stored rows)."""
    info = store.run_with_results(con, run_id)
    groups = store.run_groups(con, info.run_id)
    pair.check(groups)
    counts, n_clusters = store.cluster_counts(con, info.run_id)
    means = contrast.group_means(store.attribution_rows(con, info.run_id), counts, n_clusters, groups)
    return contrast.contrast(means, pair, by)


def common_neurons(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Sec. 4.4: the run's common neurons (layer, neuron, n_clusters, frequency), most frequent first."""
    info = store.run_with_results(con, run_id)
    counts = store.common_neuron_counts(con, info.run_id)
    return qrnca.common_neurons(counts, cast(int, info.n_clusters), info.settings.qrnca.u)  # run_with_results checked


def query_neurons(con: duckdb.DuckDBPyConnection, run_id: str, query_id: str) -> pd.DataFrame:
    """Every stored neuron of one query with NA, cluster count, ICA, common flag, NAICA, and why it is (not) a QR neuron.

    Columns of `qrnca.explain`, sorted by NAICA (highest first); `kept` rows are the query's QRNCA neurons.
    """
    info = store.run_with_results(con, run_id)
    sparse, stats = store.query_rows(con, info.run_id, query_id)
    rows = qrnca.explain(qrnca.naica(sparse, stats), info.settings.qrnca.v)
    return rows.drop(columns="query_id").sort_values(
        ["naica", "layer", "neuron"], ascending=[False, True, True], ignore_index=True
    )


def qrnca_at(con: duckdb.DuckDBPyConnection, run_id: str, t: float, u: float, v: int) -> live.LiveQRNCA:
    """The run's QRNCA results at thresholds t, u, v, recomputed from its stored rows (`live.at_thresholds`)."""
    info = store.run_with_results(con, run_id)
    rows, ig = store.stored_rows(con, info.run_id)
    return live.at_thresholds(rows, ig, store.run_groups(con, info.run_id), info.settings.qrnca, t, u, v)


def template_consistency(con: duckdb.DuckDBPyConnection, run_id: str, t: float | None = None) -> pd.DataFrame:
    """Per query of the run: `consistency.template_consistency` at t (default the run's) with its group_name.

    QRNError for a run without per-template IG, or for t below the run's storage floor.
    """
    info = store.run_with_results(con, run_id)
    t = live.check_t(info.settings.qrnca, info.settings.qrnca.t if t is None else t)
    rows, ig = store.stored_rows(con, info.run_id)
    if ig is None:
        raise QRNError(
            f"run {info.name!r} was stored without per-template IG (before store schema 2), so template "
            "consistency is not available for it; recompute the run with `qrn run` to see it."
        )
    out = consistency.template_consistency(rows["query_id"], ig, t)
    return out.assign(group_name=out["query_id"].map(store.run_groups(con, info.run_id)))


def neuron_card(con: duckdb.DuckDBPyConnection, run_id: str, layer: int, neuron: int) -> card.NeuronCard:
    """One neuron of a run with results (`card.build_card`); QRNError for a neuron outside the run's model."""
    info = store.run_with_results(con, run_id)
    card.check_neuron(layer, neuron, info.n_layers, info.n_neurons)
    attributions, qr, top = store.neuron_rows(con, info.run_id, layer, neuron)
    groups = store.run_groups(con, info.run_id)
    return card.build_card(layer, neuron, attributions, qr, top, groups, info.settings.qrnca.u)
