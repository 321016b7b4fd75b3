"""QRNCA for a question outside a run: its NA scored against the run's clusters, as if it were one more run query.

The question's coarse cluster joins the run's |C| clusters, so there are |C| + 1: a neuron's count is the run's
count plus one if the question's cluster holds it, ICA = ln((|C| + 1) / (count + 1)) (Eq. 6), a common neuron is in
more than u x (|C| + 1) clusters (Sec. 4.4), and the QR neurons are the top-v by NA x ICA minus the common ones
(Sec. 4.5). The run's own queries are not re-ranked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qrcore.attribution.results import QueryAttribution
from qrcore.selection import qrnca
from qrcore.settings import QRNCASettings


def score_against_run(attr: QueryAttribution, counts: pd.DataFrame, n_clusters: int, s: QRNCASettings) -> pd.DataFrame:
    """The question's stored-style rows as `qrnca.explain` gives them (kept = QR neuron), highest NAICA first.

    `counts` are the run's cluster counts per neuron (layer, neuron, n_clusters; `qrnca.cluster_counts`), `n_clusters`
    its |C| and `s` its QRNCA settings, which also form the question's cluster.
    """
    sparse = qrnca.sparsify(attr, s).drop(columns="ig")
    n_in = (
        sparse[["layer", "neuron"]]
        .merge(counts, on=["layer", "neuron"], how="left")["n_clusters"]
        .fillna(0)
        .to_numpy(np.int64)
        + sparse["in_cluster"].to_numpy()
    )  # (rows,)
    stats = sparse[["layer", "neuron"]].assign(
        n_clusters=n_in, ica=qrnca.ica(n_in, n_clusters + 1), is_common=qrnca.is_common(n_in, n_clusters + 1, s.u)
    )
    rows = qrnca.explain(qrnca.naica(sparse, stats), s.v)
    return rows.sort_values(["naica", "layer", "neuron"], ascending=[False, True, True], ignore_index=True)
