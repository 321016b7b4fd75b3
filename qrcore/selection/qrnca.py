"""QRNCA selection (paper Sec. 4.3-4.5) and the Sec. 5.1 baselines on a sparse long table; no model, no database.

The input of everything after `sparsify` is a long table with one row per stored (query, neuron):
columns query_id (str), layer (int), neuron (int), na (float) and in_cluster (bool, the row belongs to
the query's coarse cluster); `sparsify` also gives ig, the templates' raw IG scores. Each query's coarse
cluster is one cluster C; |C| is the number of queries of the run, passed explicitly because a query whose
NA is nowhere positive has an empty cluster and no rows.

Selection follows the paper and the authors' released code (github.com/tigerchen52/qrneuron):
among a query's cluster neurons with NAICA > 0, take the top-v by NAICA, then drop the common neurons.
Ties are broken by (layer, neuron) so every result is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import zlib

import numpy as np
import pandas as pd

from qrcore.attribution.results import QueryAttribution
from qrcore.selection import analysis
from qrcore.selection.topk import top_neurons
from qrcore.settings import METHODS, QRNCASettings

METHOD_NAMES = {
    "qrnca": "QRNCA",
    "random": "Random",
    "activation": "Activation",
    "kn": "Knowledge Neuron*",
    "qrnca_no_ica": "QRNCA w/o ICA",
    "qrnca_with_common": "QRNCA w/ common neurons",
}
"""Each method's name in the paper's Table 4, for tables people read (files and the store keep the ids)."""

QR_COLUMNS = ["query_id", "rank", "layer", "neuron", "score"]
TOP_ACTIVATIONS = 50
"""Highest activations kept per query for the activation baseline."""

REASONS = {
    "kept": "kept as QR neuron",
    "not_cluster": "not in the coarse cluster (NA <= t x max NA)",
    "not_positive": "NAICA <= 0 (in too many clusters)",
    "beyond_v": "outside the top-v by NAICA",
    "common": "common neuron (in more than u of all clusters)",
}
"""Why a stored neuron of a query is or is not one of its QR neurons, in the order the checks apply."""


@dataclass(frozen=True)
class QueryNA:
    """One query's NA (Eq. 5) and coarse cluster (Sec. 4.3) under a run's QRNCA settings."""

    na: np.ndarray
    """float32 (layers, neurons): the score divided by Z; a cluster neuron's score sums its above-threshold templates
    (all templates with cluster="sum"), any other neuron's score sums all templates."""
    in_cluster: np.ndarray
    """bool (layers, neurons): the coarse cluster."""
    above: np.ndarray
    """bool (templates, layers, neurons): template p's IG exceeds t times that template's maximum."""


def query_na(ig: np.ndarray, s: QRNCASettings) -> QueryNA:
    """NA and coarse cluster of one query from its templates' IG (templates, layers, neurons) (Eq. 5, Sec. 4.3).

    cluster="template" (the authors' code): each template is thresholded at t x its maximum, the cluster is the union,
    and a cluster neuron's score is the sum of its above-threshold template scores. cluster="sum" (the text, read
    literally): the templates are summed first and the sum is thresholded. Z is the sum of the cluster's scores
    ("cluster_sum", the code), the sum of all neurons' summed scores ("all_sum", the text) or the largest absolute
    score ("max_abs"); NA is 0 everywhere when Z <= 0, as in the code.
    """
    above = ig > s.t * ig.max(axis=(1, 2), keepdims=True)  # (templates, layers, neurons), compared in ig's dtype
    total = ig.sum(axis=0, dtype=np.float64)  # (layers, neurons)
    if s.cluster == "template":
        in_cluster = above.any(axis=0)  # (layers, neurons)
        score = np.where(in_cluster, (ig * above).sum(axis=0, dtype=np.float64), total)  # (layers, neurons)
    else:
        in_cluster = total > s.t * total.max()  # (layers, neurons)
        score = total
    z = {"cluster_sum": score[in_cluster].sum(), "all_sum": total.sum(), "max_abs": np.abs(score).max()}[s.z]
    na = score / z if z > 0 else np.zeros_like(score)  # (layers, neurons)
    return QueryNA(na.astype(np.float32), in_cluster, above)


def sparsify(attr: QueryAttribution, s: QRNCASettings) -> pd.DataFrame:
    """Rows kept in the store for one query: its coarse cluster plus every neuron above floor x a template's maximum.

    Each row keeps the templates' raw IG (a list), so clusters at other thresholds down to the floor can be redone.
    """
    q = query_na(attr.ig, s)
    ig = attr.ig  # (templates, layers, neurons)
    total = ig.sum(axis=0)  # (layers, neurons)
    keep = (
        q.in_cluster | (ig > s.floor * ig.max(axis=(1, 2), keepdims=True)).any(axis=0) | (total > s.floor * total.max())
    )  # (layers, neurons)
    layer, neuron = np.nonzero(keep)  # (rows,) each, row-major order
    return pd.DataFrame(
        {
            "query_id": attr.query_id,
            "layer": layer.astype(np.int16),
            "neuron": neuron.astype(np.int32),
            "na": q.na[keep],
            "in_cluster": q.in_cluster[keep],
            "ig": list(ig[:, layer, neuron].T.astype(np.float32)),
        }
    )


def cluster_counts(sparse: pd.DataFrame) -> pd.DataFrame:
    """For every stored neuron, the number of clusters (queries' coarse clusters) containing it; 0 if only above the floor."""
    counts = sparse.groupby(["layer", "neuron"], sort=True)["in_cluster"].sum()
    return counts.astype(np.int64).rename("n_clusters").reset_index()


def ica(n_in: np.ndarray | int, n_clusters: int) -> np.ndarray:
    """Inverse cluster attribution, Eq. 6: ICA(n) = ln(|C| / (count_n + 1)), low for neurons found in many clusters."""
    return np.log(n_clusters / (np.asarray(n_in, dtype=np.float64) + 1.0))


def is_common(n_in: np.ndarray | int, n_clusters: int, u: float) -> np.ndarray:
    """Common neurons (Sec. 4.4): in more than u x |C| clusters (u x |C| rounded to 9 decimals against float noise)."""
    return np.asarray(n_in) > round(u * n_clusters, 9)


def common_neurons(counts: pd.DataFrame, n_clusters: int, u: float) -> pd.DataFrame:
    """The common neurons (Sec. 4.4) of `cluster_counts` rows, with frequency = count / |C|, most frequent first."""
    common = counts.loc[is_common(counts["n_clusters"].to_numpy(), n_clusters, u), ["layer", "neuron", "n_clusters"]]
    common = common.assign(frequency=common["n_clusters"] / n_clusters)
    return common.sort_values(["n_clusters", "layer", "neuron"], ascending=[False, True, True], ignore_index=True)


def neuron_stats(sparse: pd.DataFrame, n_clusters: int, u: float) -> pd.DataFrame:
    """Per stored neuron of a run: cluster count, ICA (Eq. 6) and the common flag (Sec. 4.4)."""
    stats = cluster_counts(sparse)
    n_in = stats["n_clusters"].to_numpy()  # (neurons,)
    return stats.assign(ica=ica(n_in, n_clusters), is_common=is_common(n_in, n_clusters, u))


def naica(sparse: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """Eq. 7 per (query, neuron) row: the rows with their neuron's n_clusters, ica, is_common and NAICA = NA x ICA."""
    rows = sparse.merge(stats, on=["layer", "neuron"], how="left", sort=False)
    return rows.assign(naica=rows["na"].to_numpy(np.float64) * rows["ica"].to_numpy())


def candidate_rank(rows: pd.DataFrame, score: str) -> np.ndarray:
    """Per-query rank (1 = highest `score`, ties by layer, neuron) of cluster rows with score > 0; 0 for other rows."""
    eligible = rows["in_cluster"].to_numpy() & (rows[score].to_numpy() > 0)  # (rows,)
    return _rank_within_query(rows, score, eligible)


def explain(rows: pd.DataFrame, v: int) -> pd.DataFrame:
    """`naica` rows with naica_rank, kept (a QR neuron: top-v by NAICA minus common, Sec. 4.5) and the reason why not."""
    rank = candidate_rank(rows, "naica")  # (rows,)
    reason = np.select(
        [~rows["in_cluster"].to_numpy(), rank == 0, rank > v, rows["is_common"].to_numpy()],
        [REASONS["not_cluster"], REASONS["not_positive"], REASONS["beyond_v"], REASONS["common"]],
        REASONS["kept"],
    )  # (rows,)
    return rows.assign(naica_rank=rank, kept=reason == REASONS["kept"], reason=reason)


def kept_neurons(explained: pd.DataFrame) -> pd.DataFrame:
    """The QR neurons (QR_COLUMNS) of `explain` rows: its kept rows, ranked by NAICA; the same as qr_neurons' "qrnca"."""
    return _ranked(explained.loc[explained["kept"].to_numpy()], "naica")


def qr_neurons(
    sparse: pd.DataFrame,
    groups: Mapping[str, str],
    s: QRNCASettings,
    method: str = "qrnca",
    *,
    activations: pd.DataFrame | None = None,
    shape: tuple[int, int] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """QR neurons of every query by `method` (one of METHODS), as rows query_id, rank (from 1), layer, neuron, score.

    `groups` maps every query of the run to its group; its size is |C|. "qrnca" is Sec. 4.5 (top-v by NAICA minus
    common neurons); "qrnca_no_ica" ranks by NA instead, "qrnca_with_common" keeps common neurons. The baselines
    take per query as many neurons as QRNCA kept: "kn" the cluster neurons by NA, "activation" the highest of
    `activations` (query_id, layer, neuron, activation), "random" uniform neurons of `shape` = (layers, neurons),
    seeded by `seed` and the query id (score NaN).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    rows = naica(sparse, neuron_stats(sparse, len(groups), s.u))
    if method in ("qrnca", "qrnca_with_common", "qrnca_no_ica"):
        score = "na" if method == "qrnca_no_ica" else "naica"
        keep = _in_range(candidate_rank(rows, score), s.v)  # (rows,)
        if method != "qrnca_with_common":
            keep &= ~rows["is_common"].to_numpy()
        return _ranked(rows.loc[keep], score)
    quota = qr_neurons(sparse, groups, s, "qrnca")["query_id"].value_counts()  # query_id -> count
    if method == "kn":
        return _top_per_query(rows, "na", rows["in_cluster"].to_numpy(), quota)
    if method == "activation":
        if activations is None:
            raise ValueError("the activation baseline needs the per-query top activations")
        return _top_per_query(activations, "activation", np.ones(len(activations), bool), quota)
    if shape is None:
        raise ValueError("the random baseline needs the model shape (layers, neurons)")
    return _random_neurons(quota, shape, seed)


def _rank_within_query(rows: pd.DataFrame, score: str, eligible: np.ndarray) -> np.ndarray:
    """1-based rank by descending `score` (ties: layer, neuron) within each query among `eligible` rows; 0 elsewhere."""
    codes = pd.factorize(rows["query_id"])[0]  # (rows,)
    idx = np.flatnonzero(eligible)  # (eligible,)
    order = idx[
        np.lexsort(
            (
                rows["neuron"].to_numpy()[idx],
                rows["layer"].to_numpy()[idx],
                -rows[score].to_numpy(np.float64)[idx],
                codes[idx],
            )
        )
    ]  # (eligible,) sorted
    sorted_codes = codes[order]  # (eligible,)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]  # first position of each query's block
    block_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))  # (eligible,)
    rank = np.zeros(len(rows), np.int64)  # (rows,)
    rank[order] = np.arange(len(order)) - block_start + 1
    return rank


def _in_range(rank: np.ndarray, limit: np.ndarray | int) -> np.ndarray:
    """Rows ranked 1..limit (limit a scalar or per row)."""
    return (rank >= 1) & (rank <= limit)


def _ranked(rows: pd.DataFrame, score: str) -> pd.DataFrame:
    """Selected rows as QR_COLUMNS, re-ranked 1.. per query by descending score (ties: layer, neuron)."""
    rank = _rank_within_query(rows, score, np.ones(len(rows), bool))  # (rows,)
    out = pd.DataFrame(
        {
            "query_id": rows["query_id"].to_numpy(),
            "rank": rank,
            "layer": rows["layer"].to_numpy(np.int64),
            "neuron": rows["neuron"].to_numpy(np.int64),
            "score": rows[score].to_numpy(np.float64),
        },
        columns=QR_COLUMNS,
    )
    return out.sort_values(["query_id", "rank"], ignore_index=True)


def _top_per_query(rows: pd.DataFrame, score: str, eligible: np.ndarray, quota: pd.Series) -> pd.DataFrame:
    """The `quota[query]` highest-`score` eligible rows of each query (queries absent from quota get none)."""
    limit = rows["query_id"].map(quota).fillna(0).to_numpy(np.int64)  # (rows,)
    keep = _in_range(_rank_within_query(rows, score, eligible), limit)  # (rows,)
    return _ranked(rows.loc[keep], score)


def _random_neurons(quota: pd.Series, shape: tuple[int, int], seed: int) -> pd.DataFrame:
    """`quota[query]` distinct uniform neurons per query over all layers x neurons; same seed and id, same neurons."""
    ids, ranks, flats = [np.empty(0, object)], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for query_id, k in sorted(quota.items()):
        rng = np.random.default_rng([seed, zlib.crc32(str(query_id).encode())])
        flats.append(rng.choice(shape[0] * shape[1], size=int(k), replace=False))  # (k,) flat neuron indices
        ids.append(np.full(k, query_id, object))
        ranks.append(np.arange(1, k + 1))
    flat = np.concatenate(flats)  # (selected,)
    return pd.DataFrame(
        {
            "query_id": np.concatenate(ids).astype(str),
            "rank": np.concatenate(ranks),
            "layer": flat // shape[1],
            "neuron": flat % shape[1],
            "score": np.full(len(flat), np.nan),
        },
        columns=QR_COLUMNS,
    )


@dataclass(frozen=True)
class RunResults:
    """A finished run's QRNCA results, computed from its stored rows."""

    stats: pd.DataFrame
    """Per stored neuron: cluster count, ICA (Eq. 6) and the common flag (Sec. 4.4), as `neuron_stats`."""
    qr: pd.DataFrame
    """QR neurons of every method of METHODS (QR_COLUMNS and the method)."""
    heatmaps: pd.DataFrame
    """NAICA (Eq. 7) summed per group, layer and neuron (Fig. 5), as `analysis.heatmap_sums`."""


def run_results(
    sparse: pd.DataFrame,
    top: pd.DataFrame,
    groups: Mapping[str, str],
    s: QRNCASettings,
    shape: tuple[int, int],
    seed: int = 0,
) -> RunResults:
    """Everything a run stores once its queries are done: |C| is the number of queries in `groups`.

    `sparse` holds the `sparsify` rows of all queries, `top` their `top_activations`; `seed` seeds the random baseline.
    """
    stats = neuron_stats(sparse, len(groups), s.u)
    qr = pd.concat(
        [
            qr_neurons(sparse, groups, s, method, activations=top, shape=shape, seed=seed).assign(method=method)
            for method in METHODS
        ],
        ignore_index=True,
    )
    return RunResults(stats, qr, analysis.heatmap_sums(naica(sparse, stats), groups))


def top_activations(attr: QueryAttribution, k: int = TOP_ACTIVATIONS) -> pd.DataFrame:
    """The k highest activations of a query at the answer position, as (query_id, layer, neuron, activation) rows."""
    top = top_neurons(attr.activation, k)  # [(layer, neuron, activation)], highest first
    return pd.DataFrame(
        {
            "query_id": attr.query_id,
            "layer": np.array([t[0] for t in top], dtype=np.int16),
            "neuron": np.array([t[1] for t in top], dtype=np.int32),
            "activation": np.array([t[2] for t in top], dtype=np.float32),
        }
    )
