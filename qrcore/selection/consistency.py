"""Template consistency: how far a query's prompt templates agree on its coarse cluster (Sec. 4.3).

Each template's cluster is its neurons with IG above t x that template's maximum; the query's coarse cluster is
their union. Agreement is the mean Jaccard index over pairs of templates, and `in_all` the share of the coarse
cluster that every template finds. 1 means the templates pick the same neurons; near 0, the cluster depends on
how the question was asked.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import numpy.typing as npt
import pandas as pd

from qrcore.selection.live import template_above

COLUMNS = ["query_id", "cluster", "in_all", "agreement", "template_sizes"]


def template_consistency(query_ids: pd.Series, ig: np.ndarray, t: float) -> pd.DataFrame:
    """Per query of the stored rows: cluster size, the share in every template's cluster, mean pairwise Jaccard.

    `query_ids` (rows,) name each row's query and `ig` (rows, templates) its templates' IG. Columns COLUMNS:
    template_sizes is a list with each template's cluster size; agreement is NaN with one template or an empty cluster.
    """
    codes, ids = pd.factorize(query_ids)
    above = template_above(ig, codes, t)  # (rows, templates)
    n = len(ids)

    def count(mask: npt.ArrayLike) -> np.ndarray:
        return np.bincount(codes, weights=mask, minlength=n)  # (queries,)

    union = count(above.any(axis=1))  # (queries,)
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs = [
            count(above[:, a] & above[:, b]) / count(above[:, a] | above[:, b])
            for a, b in combinations(range(above.shape[1]), 2)
        ]  # each (queries,)
        agreement = np.mean(pairs, axis=0) if pairs else np.full(n, np.nan)  # (queries,)
        in_all = count(above.all(axis=1)) / union  # (queries,)
    sizes = np.stack([count(above[:, p]) for p in range(above.shape[1])], axis=1).astype(int)  # (queries, templates)
    return pd.DataFrame(
        {
            "query_id": ids,
            "cluster": union.astype(int),
            "in_all": in_all,
            "agreement": agreement,
            "template_sizes": list(sizes),
        },
        columns=COLUMNS,
    )


def dense_consistency(query_id: str, ig: np.ndarray, t: float) -> pd.Series:
    """`template_consistency` of one query from its full (templates, layers, neurons) IG, as one row."""
    flat = ig.reshape(ig.shape[0], -1).T  # (layers * neurons, templates)
    return template_consistency(pd.Series([query_id] * len(flat)), flat, t).iloc[0]
