"""Neuron card: one neuron of a run, from what the store keeps (clusters, NA, NAICA, QR ranks, top activations); its
activation over the run's queries is `qrcore.selection.activations`'."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qrcore.errors import QRNError
from qrcore.selection import qrnca


@dataclass(frozen=True)
class NeuronCard:
    """One neuron of a finished run."""

    layer: int
    neuron: int
    n_clusters: int
    """How many of the run's coarse clusters hold it."""
    frequency: float
    """n_clusters / |C|."""
    ica: float
    """Eq. 6."""
    is_common: bool
    """In more than u of all clusters (Sec. 4.4)."""
    queries: pd.DataFrame
    """The queries whose coarse cluster holds it: query_id, group_name, na, naica, qr_rank (0: not a QR neuron)."""
    groups: pd.DataFrame
    """Per group: mean_na over all its queries (0 where not stored), clusters and qr_neuron (how many queries)."""
    top_activations: pd.DataFrame
    """The queries where it is among the stored highest activations: query_id, group_name, activation."""


def check_neuron(layer: int, neuron: int, n_layers: int, n_neurons: int) -> None:
    """A one-line QRNError for a neuron outside a model of n_layers x n_neurons."""
    if not (0 <= layer < n_layers and 0 <= neuron < n_neurons):
        raise QRNError(
            f"neuron {layer}:{neuron} is outside this run's model (layers 0-{n_layers - 1}, neurons "
            f"0-{n_neurons - 1}); pick a layer and index in range."
        )


def build_card(
    layer: int,
    neuron: int,
    rows: pd.DataFrame,
    qr: pd.DataFrame,
    top: pd.DataFrame,
    groups: Mapping[str, str],
    u: float,
) -> NeuronCard:
    """The card from the neuron's stored rows (query_id, na, in_cluster), its QR ranks (query_id, rank) and stored top
    activations (query_id, activation); `groups` maps every query of the run to its group, so |C| = len(groups)."""
    n_clusters = int(rows["in_cluster"].sum())
    ica = float(qrnca.ica(n_clusters, len(groups)))
    clustered = rows.loc[rows["in_cluster"].to_numpy()]
    queries = pd.DataFrame(
        {
            "query_id": clustered["query_id"],
            "group_name": clustered["query_id"].map(groups),
            "na": clustered["na"].to_numpy(np.float64),
            "naica": clustered["na"].to_numpy(np.float64) * ica,
        }
    )
    queries = queries.merge(qr.rename(columns={"rank": "qr_rank"}), on="query_id", how="left")
    queries = (
        queries.fillna({"qr_rank": 0})
        .astype({"qr_rank": int})
        .sort_values(["naica", "query_id"], ascending=[False, True], ignore_index=True)
    )
    na = pd.Series(0.0, index=list(groups)).add(rows.set_index("query_id")["na"].astype(np.float64), fill_value=0.0)
    per_group = pd.DataFrame(
        {
            "group_name": [groups[q] for q in na.index],
            "na": na.to_numpy(),
            "clusters": na.index.isin(clustered["query_id"]),
            "qr_neuron": na.index.isin(qr["query_id"]),
        }
    )
    per_group = (
        per_group.groupby("group_name", sort=True)
        .agg(mean_na=("na", "mean"), clusters=("clusters", "sum"), qr_neuron=("qr_neuron", "sum"))
        .reset_index()
    )
    top = top.assign(group_name=top["query_id"].map(groups))[["query_id", "group_name", "activation"]]
    return NeuronCard(
        layer,
        neuron,
        n_clusters,
        n_clusters / len(groups),
        ica,
        bool(qrnca.is_common(n_clusters, len(groups), u)),
        queries,
        per_group,
        top.sort_values("activation", ascending=False, ignore_index=True),
    )
