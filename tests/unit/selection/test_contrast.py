"""Contrasts of two groups, on a hand-computed run of three queries (two groups) and three neurons."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qrcore.errors import QRNError
from qrcore.selection.contrast import Pair, contrast, depth_profile, group_means

GROUPS = {"q1": "g1", "q2": "g1", "q3": "g2"}
ROWS = pd.DataFrame(
    [
        ("q1", 0, 0, 0.5, True),
        ("q1", 0, 1, 0.2, True),
        ("q2", 0, 1, 0.4, True),
        ("q3", 0, 1, 0.6, True),
        ("q3", 1, 0, 0.35, False),  # kept above the floor only: no NAICA, not in the cluster
    ],
    columns=["query_id", "layer", "neuron", "na", "in_cluster"],
)
COUNTS = pd.DataFrame({"layer": [0, 0, 1], "neuron": [0, 1, 0], "n_clusters": [1, 2, 0]})
N_CLUSTERS = 3  # ICA (Eq. 6): ln(3/2), ln(3/3) = 0, ln(3/1)


def means() -> pd.DataFrame:
    return group_means(ROWS, COUNTS, N_CLUSTERS, GROUPS)


def test_group_means_average_over_all_of_a_groups_queries():
    got = means().set_index(["group_name", "layer", "neuron"])
    assert got.loc[("g1", 0, 0), "na"] == pytest.approx(0.25)  # q2 did not keep it: counts 0
    assert got.loc[("g1", 0, 1), "na"] == pytest.approx(0.3)
    assert got.loc[("g1", 0, 0), "naica"] == pytest.approx(0.5 * math.log(1.5) / 2)
    assert got.loc[("g1", 0, 1), "naica"] == 0.0  # in 2 of 3 clusters: ICA ln(1) = 0
    assert got.loc[("g2", 1, 0), "naica"] == 0.0 and got.loc[("g2", 1, 0), "cluster_share"] == 0.0
    assert got.loc[("g1", 0, 0), "cluster_share"] == pytest.approx(0.5)


def test_contrast_by_na_ranks_the_most_separating_neurons_first_either_way():
    got = contrast(means(), Pair("g1", "g2"), "na")
    assert got[["layer", "neuron"]].values.tolist() == [[1, 0], [0, 1], [0, 0]]
    assert got["difference"].tolist() == pytest.approx([0.0 - 0.35, 0.3 - 0.6, 0.25])
    assert got["na_g1"].tolist() == pytest.approx([0.0, 0.3, 0.25])
    assert got["cluster_share_g2"].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_contrast_by_naica_discounts_a_neuron_in_many_clusters():
    got = contrast(means(), Pair("g1", "g2"), "naica")
    assert got[["layer", "neuron"]].values.tolist() == [[0, 0], [0, 1], [1, 0]]  # zeros tie: by layer, neuron
    assert got["difference"].tolist() == pytest.approx([0.5 * math.log(1.5) / 2, 0.0, 0.0])
    reversed_ = contrast(means(), Pair("g2", "g1"), "naica")
    assert reversed_["difference"].iloc[0] == pytest.approx(-got["difference"].iloc[0])


def test_depth_profile_shares_the_separating_mass_by_layer_and_direction():
    profile = depth_profile(contrast(means(), Pair("g1", "g2"), "na"), n_layers=2).set_index(["layer", "toward"])
    assert profile["share"].sum() == pytest.approx(1.0)
    assert profile.loc[(0, "first"), "share"] == pytest.approx(0.25 / 0.9)
    assert profile.loc[(0, "second"), "share"] == pytest.approx(0.3 / 0.9)
    assert profile.loc[(1, "second"), "share"] == pytest.approx(0.35 / 0.9)
    assert profile.loc[(1, "first"), "share"] == 0.0
    assert np.array_equal(profile["relative_depth"].to_numpy(), [0.0, 0.0, 1.0, 1.0])


def test_bad_pairs_and_scores_get_one_line_naming_what_to_do():
    with pytest.raises(QRNError, match="two different groups, and both are 'g1'; pick another group"):
        Pair("g1", "g1")
    with pytest.raises(QRNError, match="the run has no group 'g3'; groups: g1, g2"):
        Pair("g1", "g3").check(GROUPS)
    with pytest.raises(QRNError, match="ranks by one of naica, na, not 'ica'"):
        contrast(means(), Pair("g1", "g2"), "ica")  # type: ignore[arg-type]
