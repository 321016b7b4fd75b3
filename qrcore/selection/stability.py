"""Stability of QR neurons, a measure the paper does not report: how far a run's coarse clusters (Sec. 4.3) and QR
neurons (Sec. 4.5) move when what should not matter changes.

A perturbation is the run's stored rows (query_id, layer, neuron, na, in_cluster) computed again for some of its
queries in another way: without one prompt template (`leave_one_template_out`, from the stored per-template IG, no
model), with another integration rule, or with another option-shuffling seed (another run of the same queries). Its
queries replace theirs in the run before ICA (Eq. 6), common neurons and NAICA (Eq. 7) are formed again, so a sample
of queries is judged under the whole run's ICA. Per perturbed query: the Jaccard index of its coarse cluster and of
its QR neurons against the run's; per QR neuron of the run: in how many of the perturbations of its query it stays a
QR neuron of that query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qrcore.errors import QRNError
from qrcore.selection import live, qrnca
from qrcore.settings import QRNCASettings

ROWS = ["query_id", "layer", "neuron", "na", "in_cluster"]
QUERY_COLUMNS = ["perturbation", "query_id", "cluster_jaccard", "qr_jaccard", "qr_kept"]
NEURON_COLUMNS = ["query_id", "rank", "layer", "neuron", "stays", "of", "stability"]


@dataclass(frozen=True)
class Stability:
    """How a run's clusters and QR neurons move under perturbations."""

    queries: pd.DataFrame
    """One row per perturbation and perturbed query (QUERY_COLUMNS): the Jaccard index of its coarse cluster and of its
    QR neurons against the run's (1 where both are empty), and the share of the run's QR neurons that stay (1 for none)."""
    neurons: pd.DataFrame
    """One row per QR neuron of the run (NEURON_COLUMNS): `of` perturbations covered its query, in `stays` of them it
    stayed a QR neuron of that query; stability = stays / of (NaN where no perturbation covered the query)."""

    def by_group(self, groups: Mapping[str, str]) -> pd.DataFrame:
        """Per perturbation and group: queries, mean cluster and QR-neuron Jaccard and share kept; 'all' rows too."""
        rows = self.queries.assign(group_name=self.queries["query_id"].map(groups))
        every = rows.assign(group_name="all")
        return (
            pd.concat([rows, every], ignore_index=True)
            .groupby(["perturbation", "group_name"], sort=True)
            .agg(
                queries=("query_id", "size"),
                cluster_jaccard=("cluster_jaccard", "mean"),
                qr_jaccard=("qr_jaccard", "mean"),
                qr_kept=("qr_kept", "mean"),
            )
            .reset_index()
        )


def leave_one_template_out(rows: pd.DataFrame, ig: np.ndarray | None, s: QRNCASettings) -> dict[str, pd.DataFrame]:
    """Per template p, the stored rows with NA and clusters formed from every template but p (Sec. 4.3, Eq. 5).

    `ig` (rows, templates) is the stored per-template IG. Z must be the cluster's sum (the authors' code), since a
    Z over all neurons cannot be formed from stored rows without one template.
    """
    if ig is None or ig.shape[1] < 2:
        raise QRNError(
            "leaving a template out needs a run with at least two templates and their stored IG (store schema 2); "
            "recompute the run."
        )
    if s.z != "cluster_sum":
        raise QRNError(f"leaving a template out needs z=cluster_sum (the run has z={s.z}); recompute the run with it.")
    templates = np.arange(ig.shape[1])
    return {f"without template {p + 1}": live.form_clusters(rows, ig[:, templates != p], s, s.t) for p in templates}


def stability(
    base: pd.DataFrame, perturbed: Mapping[str, pd.DataFrame], groups: Mapping[str, str], s: QRNCASettings
) -> Stability:
    """Each perturbation's rows (ROWS, some queries) put in place of the run's `base` rows, QRNCA formed again, and
    the clusters and QR neurons of the perturbed queries compared with the run's; `groups` maps every query to its
    group (|C|)."""
    base_qr = _qr_sets(base[ROWS], groups, s)
    base_cluster = _cluster_sets(base)
    queries, covered, stayed = [], [], []
    for name, rows in perturbed.items():
        ids = set(rows["query_id"])
        unknown = ids - set(groups)
        if unknown:
            raise QRNError(f"perturbation {name!r} has query {sorted(unknown)[0]!r}, which is not in the run.")
        mixed = pd.concat([base.loc[~base["query_id"].isin(ids), ROWS], rows[ROWS]], ignore_index=True)
        qr, cluster = _qr_sets(mixed, groups, s), _cluster_sets(rows)
        for qid in sorted(ids):
            before, kept = base_qr.get(qid, frozenset()), qr.get(qid, frozenset())
            queries.append(
                (
                    name,
                    qid,
                    _jaccard(base_cluster.get(qid, frozenset()), cluster.get(qid, frozenset())),
                    _jaccard(before, kept),
                    len(before & kept) / len(before) if before else 1.0,
                )
            )
            covered.append(qid)
            stayed.extend((qid, layer, neuron) for layer, neuron in kept)
    return Stability(
        pd.DataFrame(queries, columns=QUERY_COLUMNS), _neuron_stability(base[ROWS], groups, s, covered, stayed)
    )


def _neuron_stability(
    base: pd.DataFrame,
    groups: Mapping[str, str],
    s: QRNCASettings,
    covered: list[str],
    stayed: list[tuple[str, int, int]],
) -> pd.DataFrame:
    """NEURON_COLUMNS for the run's QR neurons: per query, perturbations that covered it and that kept each neuron."""
    qr = qrnca.qr_neurons(base, groups, s)
    of = qr["query_id"].map(pd.Series(covered, dtype=object).value_counts()).fillna(0).astype(int)
    kept = pd.Series(stayed, dtype=object).value_counts()  # (query, layer, neuron) -> perturbations that kept it
    keys = pd.Series(list(zip(qr["query_id"], qr["layer"], qr["neuron"])), dtype=object)
    stays = keys.map(kept).fillna(0).astype(int).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(of > 0, stays / of.to_numpy(), np.nan)
    return qr[["query_id", "rank", "layer", "neuron"]].assign(stays=stays, of=of.to_numpy(), stability=share)


def _qr_sets(rows: pd.DataFrame, groups: Mapping[str, str], s: QRNCASettings) -> dict[str, frozenset]:
    """Each query's QR neurons (Sec. 4.5) as a set of (layer, neuron)."""
    qr = qrnca.qr_neurons(rows, groups, s)
    return {str(qid): frozenset(zip(g["layer"], g["neuron"])) for qid, g in qr.groupby("query_id", sort=False)}


def _cluster_sets(rows: pd.DataFrame) -> dict[str, frozenset]:
    """Each query's coarse cluster as a set of (layer, neuron)."""
    cluster = rows.loc[rows["in_cluster"].to_numpy(bool)]
    return {qid: frozenset(zip(g["layer"], g["neuron"])) for qid, g in cluster.groupby("query_id", sort=False)}


def _jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b|, 1 where both are empty (nothing moved)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0
