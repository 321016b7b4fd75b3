"""The paper's model-free measurements on hand-computed tiny cases."""

from math import log

import numpy as np
import pandas as pd
import pytest

from hand_tables import GROUPS, sparse_table
from qrcore.selection import analysis, qrnca

NAN = np.nan
ICA_A, ICA_BCD, ICA_E = log(5 / 4), log(5 / 3), log(5 / 2)


def naica_rows() -> pd.DataFrame:
    return qrnca.naica(sparse_table(), qrnca.neuron_stats(sparse_table(), 5, 0.5))


def qr_table(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query_id": [r[0] for r in rows],
            "rank": 1,
            "layer": [r[1] for r in rows],
            "neuron": [r[2] for r in rows],
            "score": 1.0,
        }
    )


def test_group_heatmap_sums_cluster_naica_of_the_groups_queries():
    g1 = analysis.group_heatmap(naica_rows(), GROUPS, 2, 3, "g1")
    # q1 and q2: A twice at NA 1.0; B 0.6, C 0.3, D 0.5; q1's E is outside its cluster and does not count.
    assert g1.dtype == np.float32 and g1.shape == (2, 3)
    assert g1 == pytest.approx(np.array([[2 * ICA_A, 0.6 * ICA_BCD, 0.0], [0.3 * ICA_BCD, 0.5 * ICA_BCD, 0.0]]))
    g2 = analysis.group_heatmap(naica_rows(), GROUPS, 2, 3, "g2")
    assert g2 == pytest.approx(np.array([[0.5 * ICA_A, ICA_BCD, 0.0], [ICA_BCD, 0.9 * ICA_BCD, ICA_E]]))


def test_heatmap_sums_are_long_rows_per_group():
    sums = analysis.heatmap_sums(naica_rows(), GROUPS)
    assert sums.columns.tolist() == ["group_name", "layer", "neuron", "score"]
    assert sums["group_name"].value_counts().to_dict() == {"g1": 4, "g2": 5}


def test_to_dense_adds_repeated_cells():
    rows = pd.DataFrame({"layer": [0, 0, 1], "neuron": [1, 1, 0], "score": [1.5, 2.0, -1.0]})
    assert analysis.to_dense(rows, 2, 2).tolist() == [[0.0, 3.5], [-1.0, 0.0]]


def test_overlap_matrix_is_jaccard_of_group_unions():
    qr = qr_table([("q1", 0, 0), ("q1", 0, 1), ("q2", 0, 1), ("q3", 0, 1), ("q3", 1, 0), ("q4", 1, 1)])
    m = analysis.overlap_matrix(qr, GROUPS | {"q6": "g3"})
    # g1 = {A, B}, g2 = {B, C, D}: 1 shared of 4; g3 has no QR neurons.
    assert m.index.tolist() == m.columns.tolist() == ["g1", "g2", "g3"]
    assert m.to_numpy().tolist() == [[1.0, 0.25, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_layer_distribution_shares_per_group():
    qr = qr_table([("q1", 0, 0), ("q1", 0, 1), ("q2", 0, 1), ("q3", 0, 1), ("q3", 1, 0), ("q4", 1, 1)])
    d = analysis.layer_distribution(qr, GROUPS | {"q6": "g3"}, 3)
    assert d.columns.tolist() == [0, 1, 2]
    assert d.to_numpy() == pytest.approx(np.array([[1.0, 0.0, 0.0], [1 / 3, 2 / 3, 0.0], [0.0, 0.0, 0.0]]))


def test_percent_change_is_relative_to_before_and_nan_for_zero():
    out = analysis.percent_change(np.array([0.5, 0.2, 0.0]), np.array([0.25, 0.3, 0.1]))
    assert out[:2] == pytest.approx([-50.0, 50.0]) and np.isnan(out[2])


def test_pcr_is_ratio_of_absolute_mean_changes():
    assert analysis.pcr(np.array([-50.0, -30.0, NAN]), np.array([-2.0, 2.0, -4.0])) == pytest.approx(30.0)


def test_pcr_zero_denominator_convention():
    assert analysis.pcr(np.array([-10.0]), np.array([1.0, -1.0])) == np.inf
    assert np.isnan(analysis.pcr(np.array([0.0]), np.array([0.0])))
    assert np.isnan(analysis.pcr(np.array([NAN]), np.array([1.0])))


def test_flip_rates_count_argmax_flips_against_starting_state():
    before = np.array([[0.7, 0.2, 0.1], [0.6, 0.4, NAN], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    after = np.array([[0.2, 0.7, 0.1], [0.55, 0.45, NAN], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    rates = analysis.flip_rates(before, after, np.array([0, 0, 2, 0]))
    assert rates == analysis.FlipRates(correct_to_incorrect=0.5, incorrect_to_correct=0.5, n_correct=2, n_incorrect=2)


def test_flip_rates_nan_without_queries_in_a_starting_state():
    rates = analysis.flip_rates(np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]]), np.array([0]))
    assert rates.correct_to_incorrect == 1.0 and np.isnan(rates.incorrect_to_correct)


def test_qr_counts_average_qr_neurons_per_query_including_queries_with_none():
    qr = qr_table([("q1", 0, 1), ("q1", 1, 2), ("q2", 0, 1), ("q3", 0, 0)])
    table = analysis.qr_counts(qr, {"q1": "g1", "q2": "g1", "q3": "g2", "q4": "g2"})
    assert table.to_dict("records") == [
        {"group_name": "g1", "queries": 2, "mean_qr_neurons": 1.5},
        {"group_name": "g2", "queries": 2, "mean_qr_neurons": 0.5},
        {"group_name": "all", "queries": 4, "mean_qr_neurons": 1.0},
    ]


def test_answer_prediction_picks_the_option_under_which_the_domain_neurons_are_most_active():
    neurons = pd.DataFrame({"layer": [0, 1], "neuron": [2, 0]})
    acts = np.zeros((3, 2, 3))  # (options, layers, neurons)
    acts[0, 0, 2], acts[0, 1, 0] = 1.0, 1.0  # mean 1.0
    acts[1, 0, 2], acts[1, 1, 0], acts[1, 1, 1] = 3.0, 0.0, 9.0  # mean 1.5; neuron (1, 1) is not the domain's
    acts[2, 0, 2], acts[2, 1, 0] = -1.0, 2.5  # mean 0.75
    assert analysis.answer_prediction(neurons, acts) == 1


def test_group_prediction_picks_group_with_highest_mean_activation():
    neurons = pd.DataFrame({"group_name": ["g1", "g2", "g2"], "layer": [0, 1, 1], "neuron": [0, 1, 2]})
    acts = np.zeros((3, 2, 3))
    acts[0, 0, 0], acts[0, 1, 1], acts[0, 1, 2] = 5, 1, 1  # g1 5 > g2 1
    acts[1, 0, 0], acts[1, 1, 1], acts[1, 1, 2] = 0, 2, 4  # g2 3
    acts[2, 0, 0], acts[2, 1, 1], acts[2, 1, 2] = 3, 4, 4  # g2 4 > g1 3
    pred = analysis.group_prediction(neurons, acts, ["g1", "g2", "g1"])
    assert pred.predicted == ("g1", "g2", "g2")
    assert pred.accuracy == pytest.approx(2 / 3)


def test_group_neuron_sets_are_distinct_per_group():
    qr = qr_table([("q1", 0, 1), ("q2", 0, 1), ("q3", 0, 1)])
    sets = analysis.group_neuron_sets(qr, GROUPS)
    assert sets.to_dict("records") == [
        {"layer": 0, "neuron": 1, "group_name": "g1"},
        {"layer": 0, "neuron": 1, "group_name": "g2"},
    ]
