"""QRNCA on hand-computed tiny cases: clusters, ICA, common neurons, top-v minus common, baselines."""

import numpy as np
import pandas as pd
import pytest

from hand_tables import GROUPS, ICA_A, ICA_BCD, ICA_E, ROWS, A, B, C, D, E, sparse_table
from qrcore.attribution.results import QueryAttribution
from qrcore.selection import qrnca
from qrcore.settings import QRNCASettings


def picked(qr: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
    """query -> [(layer, neuron), ...] in rank order."""
    qr = qr.sort_values(["query_id", "rank"])
    return {q: list(zip(part["layer"], part["neuron"])) for q, part in qr.groupby("query_id")}


def test_coarse_cluster_is_strictly_above_t_times_max():
    ig = np.array([[[1.0, 0.2], [0.21, -0.5]]], np.float32)  # one template
    assert qrnca.query_na(ig, QRNCASettings(t=0.2)).in_cluster.tolist() == [[True, False], [True, False]]


def test_coarse_cluster_is_empty_and_na_zero_when_no_score_is_positive():
    q = qrnca.query_na(np.array([[[-1.0, -0.5]]]), QRNCASettings())
    assert not q.in_cluster.any() and not q.na.any()


# Two templates of three neurons. Template 1 is above 0.2 x 1.0 only at n0, template 2 only at n1; n2 is above
# the threshold in neither template, but its sum over templates (0.3) is above 0.2 x the largest sum (1.1).
IG2 = np.array([[[1.0, 0.1, 0.15]], [[0.0, 1.0, 0.15]]], np.float32)  # (templates, layers, neurons)


def test_authors_cluster_is_the_union_of_per_template_clusters_with_above_threshold_scores_summed():
    q = qrnca.query_na(IG2, QRNCASettings(t=0.2, cluster="template", z="cluster_sum"))
    assert q.above.tolist() == [[[True, False, False]], [[False, True, False]]]
    assert q.in_cluster.tolist() == [[True, True, False]]
    # n0: 1.0 (template 2's 0.0 is not above), n1: 1.0 (template 1's 0.1 is not above); Z = 1.0 + 1.0.
    # n2 is outside the cluster: its score is the plain sum 0.3, divided by the same Z.
    assert q.na[0].tolist() == pytest.approx([0.5, 0.5, 0.15])


def test_text_cluster_thresholds_the_sum_of_templates():
    q = qrnca.query_na(IG2, QRNCASettings(t=0.2, cluster="sum", z="cluster_sum"))
    assert q.in_cluster.tolist() == [[True, True, True]]  # sums 1.0, 1.1, 0.3 > 0.22
    assert q.na[0].tolist() == pytest.approx([1.0 / 2.4, 1.1 / 2.4, 0.3 / 2.4])


def test_z_is_the_cluster_sum_the_sum_of_all_or_the_largest_score():
    ig = np.array([[[1.0, 0.5, 0.1, -0.2]]], np.float32)  # cluster at t = 0.2: the first two
    na = {z: qrnca.query_na(ig, QRNCASettings(z=z)).na[0].tolist() for z in ("cluster_sum", "all_sum", "max_abs")}
    assert na["cluster_sum"] == pytest.approx([1 / 1.5, 0.5 / 1.5, 0.1 / 1.5, -0.2 / 1.5])
    assert na["all_sum"] == pytest.approx([1 / 1.4, 0.5 / 1.4, 0.1 / 1.4, -0.2 / 1.4])
    assert na["max_abs"] == pytest.approx([1.0, 0.5, 0.1, -0.2])


def test_na_is_zero_when_z_is_not_positive():
    ig = np.array([[[1.0, -3.0]]], np.float32)  # all_sum Z = -2
    assert not qrnca.query_na(ig, QRNCASettings(z="all_sum")).na.any()


def test_sparsify_keeps_cluster_and_rows_above_a_templates_floor_with_their_ig():
    ig = np.array(
        [[[0.0, 0.5, 0.04], [1.0, 0.1, 0.06]], [[0.0, 0.0, 0.0], [0.0, 0.02, 1.0]]], np.float32
    )  # (2 templates, 2 layers, 3 neurons)
    attr = QueryAttribution("q", ig, np.zeros_like(ig[0]), 0.5, 1.0)
    rows = qrnca.sparsify(attr, QRNCASettings(t=0.2, floor=0.05))
    assert rows["query_id"].tolist() == ["q"] * 4
    assert list(zip(rows["layer"], rows["neuron"])) == [(0, 1), (1, 0), (1, 1), (1, 2)]
    assert rows["in_cluster"].tolist() == [True, True, False, True]
    # cluster scores: (0,1) 0.5, (1,0) 1.0, (1,2) 1.0 (template 2 only); Z = 2.5; (1,1) sums both templates
    assert rows["na"].tolist() == pytest.approx([0.2, 0.4, 0.12 / 2.5, 0.4])
    assert np.stack(rows["ig"]).ravel().tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0, 0.1, 0.02, 0.06, 1.0])


def test_cluster_counts_count_cluster_rows_only():
    counts = qrnca.cluster_counts(sparse_table())
    assert list(zip(counts["layer"], counts["neuron"], counts["n_clusters"])) == [
        (0, 0, 3),
        (0, 1, 2),
        (1, 0, 2),
        (1, 1, 2),
        (1, 2, 1),
    ]


def test_ica_is_natural_log_of_clusters_over_count_plus_one():
    assert qrnca.ica(np.array([3, 0, 4]), 5) == pytest.approx([0.22314355, 1.60943791, 0.0])


def test_common_neurons_need_strictly_more_than_u_of_clusters():
    counts = qrnca.cluster_counts(sparse_table())
    at_boundary = qrnca.common_neurons(counts, 5, 0.6)  # A is in exactly 0.6 x 5 = 3 clusters
    assert at_boundary.empty
    common = qrnca.common_neurons(counts, 5, 0.5)
    assert common.to_dict("records") == [{"layer": 0, "neuron": 0, "n_clusters": 3, "frequency": 0.6}]


def test_is_common_ignores_float_noise_at_the_boundary():
    assert qrnca.is_common(np.array([29, 30]), 100, 0.29).tolist() == [False, True]  # 0.29 * 100 = 28.999...


def test_naica_is_na_times_ica_per_row():
    rows = qrnca.naica(sparse_table(), qrnca.neuron_stats(sparse_table(), 5, 0.5))
    q1 = rows[rows["query_id"] == "q1"]
    assert q1["naica"].tolist() == pytest.approx([1.0 * ICA_A, 0.6 * ICA_BCD, 0.3 * ICA_BCD, 0.1 * ICA_E])
    assert q1["is_common"].tolist() == [True, False, False, False]


def test_qrnca_takes_top_v_by_naica_then_removes_common():
    qr = qrnca.qr_neurons(sparse_table(), GROUPS, QRNCASettings(u=0.5, v=2))
    # q1: top-2 by NAICA is B (0.306), A (0.223); A is common, so C (0.153, third) does not move up.
    assert picked(qr) == {"q1": [B], "q2": [D], "q3": [B, D], "q4": [E], "q5": [C]}
    assert qr.columns.tolist() == ["query_id", "rank", "layer", "neuron", "score"]
    assert qr.loc[qr["query_id"] == "q3", "score"].tolist() == pytest.approx([1.0 * ICA_BCD, 0.9 * ICA_BCD])
    assert qr.loc[qr["query_id"] == "q3", "rank"].tolist() == [1, 2]


def test_qrnca_with_common_keeps_common_neurons():
    qr = qrnca.qr_neurons(sparse_table(), GROUPS, QRNCASettings(u=0.5, v=2), "qrnca_with_common")
    assert picked(qr) == {"q1": [B, A], "q2": [D, A], "q3": [B, D], "q4": [E, A], "q5": [C]}


def test_qrnca_no_ica_ranks_by_na():
    s = QRNCASettings(u=0.5, v=1)
    assert picked(qrnca.qr_neurons(sparse_table(), GROUPS, s))["q1"] == [B]  # B has the top NAICA
    no_ica = picked(qrnca.qr_neurons(sparse_table(), GROUPS, s, "qrnca_no_ica"))
    assert no_ica == {"q3": [B], "q4": [E], "q5": [C]}  # q1's and q2's top-1 by NA is A, which is common


def test_kn_takes_as_many_cluster_neurons_by_na_as_qrnca_kept():
    qr = qrnca.qr_neurons(sparse_table(), GROUPS, QRNCASettings(u=0.5, v=2), "kn")
    assert picked(qr) == {"q1": [A], "q2": [A], "q3": [B, D], "q4": [E], "q5": [C]}
    assert qr["score"].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.9, 1.0, 1.0])


def test_activation_baseline_takes_highest_activations_up_to_qrnca_count():
    acts = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q3", "q3", "q3"],
            "layer": [1, 0, 0, 1, 0],
            "neuron": [2, 0, 1, 1, 0],
            "activation": [5.0, 3.0, 2.0, 1.0, 4.0],
        }
    )
    qr = qrnca.qr_neurons(sparse_table(), GROUPS, QRNCASettings(u=0.5, v=2), "activation", activations=acts)
    assert picked(qr) == {"q1": [E], "q3": [A, B]}
    assert qr["score"].tolist() == [5.0, 4.0, 2.0]


def test_random_baseline_matches_counts_and_is_deterministic():
    s = QRNCASettings(u=0.5, v=2)
    first = qrnca.qr_neurons(sparse_table(), GROUPS, s, "random", shape=(40, 1000), seed=7)
    again = qrnca.qr_neurons(sparse_table(), GROUPS, s, "random", shape=(40, 1000), seed=7)
    other = qrnca.qr_neurons(sparse_table(), GROUPS, s, "random", shape=(40, 1000), seed=8)
    assert first["query_id"].value_counts().sort_index().to_dict() == {"q1": 1, "q2": 1, "q3": 2, "q4": 1, "q5": 1}
    pd.testing.assert_frame_equal(first, again)
    assert picked(first) != picked(other)
    assert first["layer"].between(0, 39).all() and first["neuron"].between(0, 999).all()
    assert first["score"].isna().all()


def test_random_baseline_of_a_query_does_not_depend_on_other_queries():
    s = QRNCASettings(u=0.5, v=2)
    full = picked(qrnca.qr_neurons(sparse_table(), GROUPS, s, "random", shape=(40, 1000)))
    q3_only = picked(
        qrnca.qr_neurons(sparse_table([r for r in ROWS if r[0] == "q3"]), GROUPS, s, "random", shape=(40, 1000))
    )
    assert q3_only == {"q3": full["q3"]}


def test_baselines_need_their_inputs():
    with pytest.raises(ValueError, match="top activations"):
        qrnca.qr_neurons(sparse_table(), GROUPS, QRNCASettings(), "activation")
    with pytest.raises(ValueError, match="unknown method 'best'"):
        qrnca.qr_neurons(sparse_table(), GROUPS, QRNCASettings(), "best")


def test_every_method_is_listed():
    assert qrnca.METHODS == ("qrnca", "random", "activation", "kn", "qrnca_no_ica", "qrnca_with_common")


def test_explain_gives_each_reason():
    rows = qrnca.naica(sparse_table(), qrnca.neuron_stats(sparse_table(), 4, 0.9))  # |C| = 4: ICA(A) = ln(4/4) = 0
    q1 = qrnca.explain(rows[rows["query_id"] == "q1"], v=1)
    assert q1["reason"].tolist() == [qrnca.REASONS[k] for k in ("not_positive", "kept", "beyond_v", "not_cluster")]
    assert q1["naica_rank"].tolist() == [0, 1, 2, 0]
    rows = qrnca.naica(sparse_table(), qrnca.neuron_stats(sparse_table(), 5, 0.5))
    assert qrnca.explain(rows[rows["query_id"] == "q4"], v=2)["reason"].tolist() == [
        qrnca.REASONS["kept"],
        qrnca.REASONS["common"],
    ]


def test_explain_kept_rows_are_the_qrnca_neurons():
    s = QRNCASettings(u=0.5, v=2)
    explained = qrnca.explain(qrnca.naica(sparse_table(), qrnca.neuron_stats(sparse_table(), 5, s.u)), s.v)
    kept = explained[explained["kept"]].sort_values(["query_id", "naica_rank"])
    qr = qrnca.qr_neurons(sparse_table(), GROUPS, s)
    assert list(zip(kept["query_id"], kept["layer"], kept["neuron"])) == list(
        zip(qr["query_id"], qr["layer"], qr["neuron"])
    )


def test_ties_are_broken_by_layer_then_neuron():
    rows = sparse_table([("q", (1, 0), 0.5, True), ("q", (0, 2), 0.5, True), ("q", (0, 1), 0.5, True)])
    qr = qrnca.qr_neurons(rows, {"q": "g", "x": "g", "y": "g"}, QRNCASettings(u=0.9, v=2))
    assert picked(qr) == {"q": [(0, 1), (0, 2)]}
