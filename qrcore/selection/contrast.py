"""Contrasts: the neurons that separate two groups of a run (by NA, Eq. 5, and by NAICA, Eq. 7), and where in
depth each model keeps them, so two models' runs of one dataset compare at relative depth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from qrcore.errors import QRNError
from qrcore.selection import qrnca
from qrcore.selection.analysis import relative_depth

ContrastScore = Literal["na", "naica"]
SCORES: tuple[ContrastScore, ...] = ("naica", "na")
"""What a contrast ranks by: the groups' mean NAICA (NA x ICA, Eq. 7), which discounts neurons found in many clusters
of the run, or their mean NA (Eq. 5)."""


@dataclass(frozen=True)
class Pair:
    """Two different groups of one run, in the order they are contrasted (first minus second)."""

    first: str
    second: str

    def __post_init__(self) -> None:
        if self.first == self.second:
            raise QRNError(f"a contrast needs two different groups, and both are {self.first!r}; pick another group")

    def check(self, groups: Mapping[str, str]) -> None:
        """QRNError naming a group of the pair that no query of `groups` (query_id -> group) belongs to."""
        known = sorted(set(groups.values()))
        for group in (self.first, self.second):
            if group not in known:
                raise QRNError(f"the run has no group {group!r}; groups: {', '.join(known)}")


def group_means(rows: pd.DataFrame, counts: pd.DataFrame, n_clusters: int, groups: Mapping[str, str]) -> pd.DataFrame:
    """Per (group_name, layer, neuron): the mean NA and NAICA over all the group's queries (a query that did not keep
    the neuron counts 0) and the share of them whose coarse cluster holds it.

    `rows` are a run's stored rows (query_id, layer, neuron, na, in_cluster); `counts` its cluster counts per neuron
    (layer, neuron, n_clusters) of |C| = `n_clusters` clusters, which give ICA (Eq. 6). As in the heatmaps (Fig. 5),
    NAICA counts a query's coarse-cluster rows only.
    """
    sizes = pd.Series(groups).value_counts()  # group -> its queries
    stats = counts.assign(ica=qrnca.ica(counts["n_clusters"].to_numpy(), n_clusters))
    rows = rows.merge(stats[["layer", "neuron", "ica"]], on=["layer", "neuron"], how="left")
    in_cluster = rows["in_cluster"].to_numpy(bool)
    rows = rows.assign(
        group_name=rows["query_id"].map(groups),
        naica=np.where(in_cluster, rows["na"].to_numpy(np.float64) * rows["ica"].to_numpy(np.float64), 0.0),
        clustered=in_cluster.astype(np.float64),
    )
    sums = rows.groupby(["group_name", "layer", "neuron"], sort=True)[["na", "naica", "clustered"]].sum()
    queries = sizes.reindex(sums.index.get_level_values("group_name")).to_numpy(np.float64)  # (rows,)
    means = sums.div(queries, axis=0).rename(columns={"clustered": "cluster_share"})
    return means.reset_index()


def contrast(means: pd.DataFrame, pair: Pair, by: ContrastScore = "naica") -> pd.DataFrame:
    """Every neuron stored for either group with both groups' means side by side and `difference` = the first's
    mean `by` minus the second's, most separating first (largest |difference|; positive: the first group's).

    Columns: layer, neuron, <by>_<first>, <by>_<second>, cluster_share_<first>, cluster_share_<second>, difference.
    """
    if by not in SCORES:
        raise QRNError(f"a contrast ranks by one of {', '.join(SCORES)}, not {by!r}")
    wide = means[means["group_name"].isin([pair.first, pair.second])].pivot_table(
        index=["layer", "neuron"], columns="group_name", values=[by, "cluster_share"], fill_value=0.0
    )
    out = pd.DataFrame(index=wide.index)
    for value in (by, "cluster_share"):
        for group in (pair.first, pair.second):
            out[f"{value}_{group}"] = wide[(value, group)] if (value, group) in wide else 0.0
    out["difference"] = out[f"{by}_{pair.first}"] - out[f"{by}_{pair.second}"]
    order = np.lexsort(
        (out.index.get_level_values("neuron"), out.index.get_level_values("layer"), -out["difference"].abs())
    )
    return out.iloc[order].reset_index()


def depth_profile(contrasted: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Where a contrast's separating mass lies: per layer, its relative depth (0 first, 1 last) and the layer's share
    of the summed |difference| toward each group (`toward` first or second), so models of different depth align."""
    magnitude = contrasted["difference"].abs()
    toward = pd.Series(np.where(contrasted["difference"].to_numpy() > 0, "first", "second"), name="toward")
    total = float(magnitude.sum()) or 1.0
    shares = magnitude.groupby([contrasted["layer"], toward]).sum().div(total)
    grid = pd.MultiIndex.from_product([range(n_layers), ["first", "second"]], names=["layer", "toward"])
    profile = shares.reindex(grid, fill_value=0.0).rename("share").reset_index()
    return profile.assign(relative_depth=relative_depth(n_layers)[profile["layer"].to_numpy()])
