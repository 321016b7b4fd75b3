"""The paper's measurements that need no model: heatmaps, overlap, layer distribution, PCR, flip rates, prediction.

`qr` tables are `qrcore.selection.qrnca.qr_neurons` output (query_id, rank, layer, neuron, score); `groups` maps
query_id -> group (domain or language). Group-level results are sorted by group name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FlipRates:
    """Table 6: how often the predicted option flips when QR neurons are edited."""

    correct_to_incorrect: float
    """Share of the queries answered correctly before that are answered wrongly after (NaN if none were correct)."""
    incorrect_to_correct: float
    """Share of the queries answered wrongly before that are answered correctly after (NaN if none were wrong)."""
    n_correct: int
    """Queries answered correctly before the edit."""
    n_incorrect: int
    """Queries answered wrongly before the edit."""


@dataclass(frozen=True)
class Prediction:
    """Table 7: groups predicted from QR-neuron activations, and the share predicted right."""

    predicted: tuple[str, ...]
    """Predicted group of each held-out query, in input order."""
    accuracy: float
    """Share of held-out queries whose predicted group is their true group."""


def heatmap_sums(naica_rows: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Fig. 5 data: per group, NAICA summed over its queries' coarse-cluster rows, as (group_name, layer, neuron, score).

    NAICA is defined on a query's coarse cluster (Sec. 4.4), so rows outside it (kept only above the storage
    floor) do not count. `naica_rows` are `qrcore.selection.qrnca.naica` rows.
    """
    rows = naica_rows.loc[naica_rows["in_cluster"].to_numpy(), ["query_id", "layer", "neuron", "naica"]]
    rows = rows.assign(group_name=rows["query_id"].map(groups))
    sums = rows.groupby(["group_name", "layer", "neuron"], sort=True)["naica"].sum()
    return sums.rename("score").reset_index()


def to_dense(rows: pd.DataFrame, n_layers: int, n_neurons: int, value: str = "score") -> np.ndarray:
    """A (layers, neurons) float32 map with `value` of each (layer, neuron) row added in; zero elsewhere."""
    dense = np.zeros((n_layers, n_neurons), np.float32)  # (layers, neurons)
    np.add.at(dense, (rows["layer"].to_numpy(np.int64), rows["neuron"].to_numpy(np.int64)), rows[value].to_numpy())
    return dense


def group_heatmap(
    naica_rows: pd.DataFrame, groups: Mapping[str, str], n_layers: int, n_neurons: int, group: str
) -> np.ndarray:
    """Fig. 5: the (layers, neurons) map of NAICA summed over one group's queries (see `heatmap_sums`)."""
    sums = heatmap_sums(naica_rows, groups)
    return to_dense(sums.loc[sums["group_name"] == group], n_layers, n_neurons)


def group_neuron_sets(qr: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """The union of each group's QR neurons, one row per distinct (group_name, layer, neuron)."""
    rows = qr[["layer", "neuron"]].assign(group_name=qr["query_id"].map(groups))
    return rows.drop_duplicates().sort_values(["group_name", "layer", "neuron"], ignore_index=True)


def overlap_matrix(qr: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Fig. 2a: group x group overlap rate of QR neurons, the Jaccard index |A ∩ B| / |A ∪ B|.

    A and B are the unions of each group's queries' QR neurons (`group_neuron_sets`); the diagonal is 1
    for a group with QR neurons. Jaccard (rather than |A ∩ B| / min) does not call a small set that sits
    inside a big one a full overlap.
    """
    sets = group_neuron_sets(qr, groups)
    names = sorted(set(groups.values()))
    sizes = sets["group_name"].value_counts().reindex(names, fill_value=0).to_numpy()  # (groups,)
    pairs = sets.merge(sets, on=["layer", "neuron"], suffixes=("_a", "_b"))
    inter = pd.crosstab(pairs["group_name_a"], pairs["group_name_b"]).reindex(index=names, columns=names, fill_value=0)
    union = sizes[:, None] + sizes[None, :] - inter.to_numpy()  # (groups, groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(union > 0, inter.to_numpy() / union, 0.0)  # (groups, groups)
    return pd.DataFrame(rate, index=pd.Index(names, name="group_name"), columns=names)


def layer_distribution(qr: pd.DataFrame, groups: Mapping[str, str], n_layers: int) -> pd.DataFrame:
    """Fig. 2b: per group (rows) the share of its QR neurons in each layer (columns 0..n_layers-1); rows sum to 1.

    Every (query, neuron) selection counts, so a neuron chosen for many queries weighs more. A group without
    QR neurons gets a row of zeros.
    """
    names = sorted(set(groups.values()))
    table = pd.crosstab(qr["query_id"].map(groups), qr["layer"]).reindex(
        index=names, columns=range(n_layers), fill_value=0
    )
    totals = table.sum(axis=1).to_numpy()[:, None]  # (groups, 1)
    share = np.divide(table.to_numpy(), totals, out=np.zeros(table.shape), where=totals > 0)  # (groups, layers)
    return pd.DataFrame(share, index=pd.Index(names, name="group_name"), columns=list(range(n_layers)))


def qr_counts(qr: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Table 3: per group (and "all"), the queries and the mean number of QR neurons per query (0 for a query with none)."""
    per_query = pd.Series(groups, name="group_name").to_frame()
    per_query["qr_neurons"] = qr["query_id"].value_counts().reindex(per_query.index, fill_value=0)
    table = per_query.groupby("group_name", sort=True)["qr_neurons"].agg(queries="size", mean_qr_neurons="mean")
    table.loc["all"] = [len(per_query), per_query["qr_neurons"].mean()]
    return table.reset_index()


def relative_depth(n_layers: int) -> np.ndarray:
    """(layers,) each layer's place in the model, 0 for the first and 1 for the last: models of different depth align."""
    return np.arange(n_layers) / max(n_layers - 1, 1)


LOCALISATION = {
    "qr_per_query": "QR neurons per query",
    "neuron_share": "share of all FFN neurons that are QR neurons",
    "mean_depth": "mean relative depth of QR neurons (0 first layer, 1 last)",
    "overlap": "mean overlap between groups (Jaccard)",
}
"""`localisation`'s keys and how they read."""


def localisation(qr: pd.DataFrame, groups: Mapping[str, str], n_layers: int, n_neurons: int) -> dict[str, float]:
    """How concentrated a run's QR neurons are (Fig. 2 in numbers), to compare models of different size.

    QR neurons per query (queries without any count), the share of all FFN neurons that is a QR neuron of some query,
    their mean relative depth over every (query, neuron) selection, and the mean overlap between different groups.
    """
    overlap = overlap_matrix(qr, groups).to_numpy()  # (groups, groups)
    between = overlap[~np.eye(len(overlap), dtype=bool)]  # (groups * (groups - 1),)
    return {
        "qr_per_query": len(qr) / max(len(groups), 1),
        "neuron_share": len(qr[["layer", "neuron"]].drop_duplicates()) / (n_layers * n_neurons),
        "mean_depth": float(relative_depth(n_layers)[qr["layer"].to_numpy(np.int64)].mean()) if len(qr) else np.nan,
        "overlap": float(between.mean()) if between.size else np.nan,
    }


def percent_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Table 4: relative change of the correct-answer probability in percent, 100 (after - before) / before.

    NaN where `before` is 0 (the change is undefined); `pcr` skips NaN.
    """
    before = np.asarray(before, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(before != 0, 100.0 * (np.asarray(after, np.float64) - before) / before, np.nan)


def pcr(related_changes: np.ndarray, unrelated_changes: np.ndarray) -> float:
    """Table 4: probability change ratio PCR = |mean related change| / |mean unrelated change| (NaN entries skipped).

    Convention for a zero denominator: inf when the related mean is non-zero (only related queries moved),
    NaN when both are zero or either side has no finite values.
    """
    related, unrelated = _abs_mean(related_changes), _abs_mean(unrelated_changes)
    if unrelated == 0:
        return np.inf if related > 0 else np.nan
    return related / unrelated


def _abs_mean(values: np.ndarray) -> float:
    """|mean| of the non-NaN values; NaN when there are none."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]  # (finite,)
    return abs(float(values.mean())) if len(values) else np.nan


def flip_rates(before: np.ndarray, after: np.ndarray, correct: np.ndarray) -> FlipRates:
    """Table 6: shares of argmax-option flips correct -> incorrect (suppression) and incorrect -> correct (boosting).

    `before` and `after` are (queries, options) option-letter probabilities before and after the edit (pad queries
    with fewer options with NaN); `correct` is (queries,) the index of the correct option. Each share is relative to
    the queries in the starting state.
    """
    right_before = np.nanargmax(before, axis=1) == correct  # (queries,)
    right_after = np.nanargmax(after, axis=1) == correct  # (queries,)
    n_correct, n_incorrect = int(right_before.sum()), int((~right_before).sum())
    lost = (right_before & ~right_after).sum() / n_correct if n_correct else np.nan
    gained = (~right_before & right_after).sum() / n_incorrect if n_incorrect else np.nan
    return FlipRates(float(lost), float(gained), n_correct, n_incorrect)


def answer_prediction(neurons: pd.DataFrame, option_activations: np.ndarray) -> int:
    """Table 7: the option predicted from a domain's neurons, the one under which they are most active on average.

    `neurons` holds the domain's neuron set (layer, neuron); `option_activations` is (options, layers, neurons),
    the activations at the position of each option letter appended to the prompt (`evaluate.held_out_activations`).
    Ties go to the first option.
    """
    means = option_activations[:, neurons["layer"].to_numpy(), neurons["neuron"].to_numpy()].mean(axis=1)  # (options,)
    return int(np.argmax(means))


def group_prediction(group_neurons: pd.DataFrame, activations: np.ndarray, truth: Sequence[str]) -> Prediction:
    """Predict each held-out query's group as the one whose QR neurons have its highest mean activation.

    Not the paper's Table 7 (that predicts answers, `answer_prediction`); a measure of how group-specific QR neurons are.

    `group_neurons` holds the training queries' QR neurons per group (`group_neuron_sets`: group_name, layer,
    neuron); `activations` is (queries, layers, neurons), the held-out queries' activations at the answer
    position; `truth` their true groups. A group without QR neurons is never predicted.
    """
    names = sorted(group_neurons["group_name"].unique())
    means = np.stack(
        [
            activations[:, part["layer"].to_numpy(), part["neuron"].to_numpy()].mean(axis=1)  # (queries,)
            for _, part in group_neurons.groupby("group_name", sort=True)
        ],
        axis=1,
    )  # (queries, groups)
    predicted = tuple(names[i] for i in means.argmax(axis=1))
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)])) if predicted else np.nan
    return Prediction(predicted, accuracy)
