"""Live thresholds: QRNCA (Sec. 4.3-4.5) redone at other t, u and v from a run's stored rows; the store is not touched.

A run keeps per query its coarse cluster and every neuron above `floor` x a template's maximum (or x the maximum of
the summed scores), each row with its templates' raw IG (store schema 2; NULL in older runs). Every cluster at a
threshold t >= floor consists of stored neurons, so it can be formed again exactly:
- cluster="template": template p's IG above t x its maximum, the union over templates, the above-threshold scores
  summed; this needs the per-template IG.
- cluster="sum": the summed IG above t x its maximum; a run without IG uses its NA, the same sum over a positive Z.
NA is the score over Z: with z="cluster_sum" the new cluster's summed score; with "all_sum" each query keeps its
stored Z (the sum over all neurons does not depend on t); "max_abs" with template clusters cannot be redone, because
the largest |score| may belong to a neuron that was not stored. u and v only need the clusters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from qrcore.errors import QRNError
from qrcore.selection import analysis, qrnca
from qrcore.settings import QRNCASettings

T_MAX = 0.99
"""The largest t the explorer offers (t must stay below 1)."""
U_MIN = 0.01
"""The smallest u the explorer offers (u must stay above 0)."""
V_MAX = 1000
"""The largest v the explorer offers."""


@dataclass(frozen=True)
class LiveQRNCA:
    """A run's QRNCA results at other thresholds, computed from its stored rows."""

    settings: QRNCASettings
    rows: pd.DataFrame
    """Every stored (query, neuron) as `qrnca.explain` gives it: na, in_cluster, n_clusters, ica, is_common, naica,
    naica_rank, kept (a QR neuron) and reason."""
    common: pd.DataFrame
    """The common neurons (layer, neuron, n_clusters, frequency), most frequent first."""
    qr: pd.DataFrame
    """QR neurons of every query (`qrnca.QR_COLUMNS`)."""
    heat: pd.DataFrame
    """Fig. 5 sums per group (group_name, layer, neuron, score)."""
    qr_per_query: pd.Series
    """Number of QR neurons of each query of the run (0 for a query with none), by query id."""


def check_t(run: QRNCASettings, t: float) -> float:
    """t itself; a one-line QRNError when it lies outside what the run's stored rows can serve (floor to T_MAX)."""
    if not run.floor <= t <= T_MAX:
        raise QRNError(
            f"t = {t:g} is outside {run.floor:g}-{T_MAX:g}: the run stores only neurons above its floor "
            f"{run.floor:g} x a template's maximum, so clusters below it cannot be formed; pick t from "
            f"{run.floor:g} to {T_MAX:g}."
        )
    return t


def check_thresholds(run: QRNCASettings, t: float, u: float, v: int) -> QRNCASettings:
    """The run's settings with t, u and v replaced; a one-line QRNError for a value the stored rows cannot serve."""
    check_t(run, t)
    if not U_MIN <= u <= 1:
        raise QRNError(f"u = {u:g} is outside {U_MIN:g}-1 (a share of all clusters); pick u from {U_MIN:g} to 1.")
    if not 1 <= v <= V_MAX or v != int(v):  # the range first: int() of an infinite v fails
        raise QRNError(f"v = {v:g} is not a whole number from 1 to {V_MAX}; pick v in that range.")
    return replace(run, t=float(t), u=float(u), v=int(v))


def template_above(ig: np.ndarray, codes: np.ndarray, t: float) -> np.ndarray:
    """(rows, templates) bool: a template's IG above t x that template's maximum over the row's query (Sec. 4.3).

    `codes` numbers each row's query; the maximum over a query's stored rows is the template's maximum whenever
    that maximum is positive, since the top neuron is always stored.
    """
    top = pd.DataFrame(ig).groupby(codes, sort=False).transform("max").to_numpy(ig.dtype)  # (rows, templates)
    return ig > t * top


def recluster(rows: pd.DataFrame, ig: np.ndarray | None, run: QRNCASettings, t: float) -> pd.DataFrame:
    """The stored rows (query_id, layer, neuron, na, in_cluster) with NA and cluster as the run would give them at t."""
    if t == run.t:
        return rows[["query_id", "layer", "neuron", "na", "in_cluster"]]
    return form_clusters(rows, ig, run, t)


def form_clusters(rows: pd.DataFrame, ig: np.ndarray | None, run: QRNCASettings, t: float) -> pd.DataFrame:
    """`recluster` computed from `ig` (rows, templates) even at the run's own t: for IG other than the run's own."""
    codes = pd.factorize(rows["query_id"])[0]  # (rows,)
    if run.cluster == "template" and ig is None:
        raise QRNError(
            "this run keeps no per-template IG (it was stored before store schema 2), so its clusters "
            f"cannot be formed at another t; keep t = {run.t:g} (u and v can change) or recompute the run."
        )
    if run.cluster == "template" and run.z == "max_abs":
        raise QRNError(
            "t cannot change for a run with z=max_abs and per-template clusters: its Z may come from a "
            f"neuron that was not stored; keep t = {run.t:g} (u and v can change)."
        )
    score, in_cluster = _scores(rows, ig, codes, run.cluster, t)  # (rows,) each
    if run.z == "cluster_sum":
        z = _per_query(np.where(in_cluster, score, 0.0), codes, "sum")  # (rows,)
    elif run.cluster == "sum":
        return rows[["query_id", "layer", "neuron", "na"]].assign(in_cluster=in_cluster)  # score and Z do not move
    else:  # all_sum with template clusters: each query keeps its stored Z = |score at the run's t| / |stored NA|
        old, _ = _scores(rows, ig, codes, run.cluster, run.t)
        z = _per_query(np.abs(old), codes, "sum") / _per_query(np.abs(rows["na"].to_numpy(np.float64)), codes, "sum")
    with np.errstate(invalid="ignore", divide="ignore"):
        na = np.where(z > 0, score / z, 0.0).astype(np.float32)  # (rows,)
    return rows[["query_id", "layer", "neuron"]].assign(na=na, in_cluster=in_cluster)


def at_thresholds(
    rows: pd.DataFrame, ig: np.ndarray | None, groups: Mapping[str, str], run: QRNCASettings, t: float, u: float, v: int
) -> LiveQRNCA:
    """ICA, common neurons, NAICA, QR neurons and heatmap sums of a run at thresholds t, u, v (`check_thresholds`).

    `rows` are the run's stored rows and `ig` their (rows, templates) IG (None for an old run); `groups` maps every
    query of the run to its group (|C|).
    """
    s = check_thresholds(run, t, u, v)
    sparse = recluster(rows, ig, run, s.t)
    stats = qrnca.neuron_stats(sparse, len(groups), s.u)
    naica_rows = qrnca.naica(sparse, stats)
    explained = qrnca.explain(naica_rows, s.v)
    qr = qrnca.kept_neurons(explained)
    per_query = qr["query_id"].value_counts().reindex(list(groups), fill_value=0).rename("qr_neurons")
    return LiveQRNCA(
        s,
        explained,
        qrnca.common_neurons(stats, len(groups), s.u),
        qr,
        analysis.heatmap_sums(naica_rows, groups),
        per_query,
    )


def _scores(
    rows: pd.DataFrame, ig: np.ndarray | None, codes: np.ndarray, cluster: str, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """(rows,) float64 score before Z and (rows,) bool coarse cluster at threshold t, as `qrnca.query_na` forms them."""
    if cluster == "template":
        if ig is None:
            raise QRNError(
                "the template cluster needs each template's IG, which this run did not store (before store schema 2); "
                "recompute it with `qrn run`"
            )
        above = template_above(ig, codes, t)  # (rows, templates)
        in_cluster = np.asarray(above.any(axis=1))  # (rows,)
        total = ig.sum(axis=1, dtype=np.float64)
        return np.where(in_cluster, (ig * above).sum(axis=1, dtype=np.float64), total), in_cluster
    total = ig.sum(axis=1, dtype=np.float64) if ig is not None else rows["na"].to_numpy(np.float64)
    return total, total > t * _per_query(total, codes, "max")


def _per_query(values: np.ndarray, codes: np.ndarray, how: Literal["sum", "max"]) -> np.ndarray:
    """(rows,) the sum or max of `values` over each row's query."""
    return pd.Series(values).groupby(codes, sort=False).transform(how).to_numpy(np.float64)
