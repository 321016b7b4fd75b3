"""Stability of QR neurons: leave-one-template-out and sampled perturbations against a hand-computed run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qrcore.errors import QRNError
from qrcore.selection import live
from qrcore.selection.stability import leave_one_template_out, stability
from qrcore.settings import QRNCASettings

S = QRNCASettings(t=0.5, u=0.5, v=2)
"""Clusters at half a template's maximum; common = in 2 or more of the 3 clusters; top 2 by NAICA."""
GROUPS = {"q1": "g1", "q2": "g1", "q3": "g2"}
IG = {  # (query, neuron) -> IG of templates 1, 2, 3; every neuron in layer 0; each query's n0/n3/n5 is every maximum
    ("q1", 0): [1.0, 1.0, 1.0],
    ("q1", 1): [0.6, 0.0, 0.0],  # in q1's cluster through template 1 only
    ("q1", 2): [0.0, 0.0, 0.3],  # below half of template 3's maximum: never in a cluster
    ("q2", 3): [1.0, 1.0, 1.0],
    ("q2", 4): [0.0, 0.8, 0.0],  # in q2's cluster through template 2 only
    ("q3", 5): [1.0, 1.0, 1.0],
    ("q3", 1): [0.0, 0.0, 0.9],  # n1 again, through template 3 only: in 2 of 3 clusters, a common neuron
}
# By hand. The run: clusters q1 {n0, n1}, q2 {n3, n4}, q3 {n5, n1}; n1 is common, so the QR neurons are q1 {n0},
# q2 {n3, n4}, q3 {n5}.
# Without template 1: q1 {n0}; n1 is in one cluster, no longer common, so q3's QR neurons are {n5, n1}.
# Without template 2: q2 {n3}, so q2's QR neurons are {n3}; everything else as in the run.
# Without template 3: q3 {n5}; n1 is not common, so q1's QR neurons are {n0, n1}.
EXPECTED = {  # (perturbation, query) -> (cluster Jaccard, QR-neuron Jaccard)
    ("without template 1", "q1"): (0.5, 1.0),
    ("without template 1", "q2"): (1.0, 1.0),
    ("without template 1", "q3"): (1.0, 0.5),
    ("without template 2", "q1"): (1.0, 1.0),
    ("without template 2", "q2"): (0.5, 0.5),
    ("without template 2", "q3"): (1.0, 1.0),
    ("without template 3", "q1"): (1.0, 0.5),
    ("without template 3", "q2"): (1.0, 1.0),
    ("without template 3", "q3"): (0.5, 1.0),
}


def stored() -> tuple[pd.DataFrame, np.ndarray]:
    """The run's stored rows (NA and cluster as the run forms them) and their (rows, templates) IG."""
    keys = list(IG)
    rows = pd.DataFrame({"query_id": [q for q, _ in keys], "layer": 0, "neuron": [n for _, n in keys]})
    ig = np.array([IG[k] for k in keys], dtype=np.float32)
    return live.form_clusters(rows.assign(na=0.0, in_cluster=False), ig, S, S.t), ig


def test_leave_one_template_out_matches_the_hand_computed_clusters_and_qr_neurons():
    rows, ig = stored()
    result = stability(rows, leave_one_template_out(rows, ig, S), GROUPS, S)
    got = {(r.perturbation, r.query_id): (r.cluster_jaccard, r.qr_jaccard) for r in result.queries.itertuples()}
    assert got == EXPECTED  # halves and ones: exact in floating point
    neurons = result.neurons.set_index(["query_id", "neuron"])
    kept = result.queries.set_index(["perturbation", "query_id"])["qr_kept"]
    assert kept[("without template 2", "q2")] == 0.5 and kept[("without template 1", "q3")] == 1.0  # {n3, n4} -> {n3}
    assert neurons["of"].tolist() == [3, 3, 3, 3]
    assert neurons["stays"].to_dict() == {("q1", 0): 3, ("q2", 3): 3, ("q2", 4): 2, ("q3", 5): 3}
    assert neurons.loc[("q2", 4), "stability"] == pytest.approx(2 / 3)
    groups = result.by_group(GROUPS).set_index(["perturbation", "group_name"])
    assert groups.loc[("without template 2", "g1"), "qr_jaccard"] == pytest.approx(0.75)  # q1 1.0, q2 0.5
    assert groups.loc[("without template 2", "g1"), "qr_kept"] == pytest.approx(0.75)
    assert groups.loc[("without template 1", "all"), "queries"] == 3
    assert groups.loc[("without template 1", "all"), "cluster_jaccard"] == pytest.approx(2.5 / 3)


def test_a_sampled_perturbation_is_judged_under_the_whole_runs_ica():
    """Only q3 recomputed, without its n1: n1 leaves the clusters of all but q1, stops being common and becomes a QR
    neuron of q1, but only q3 is compared; q1 and q2 stay uncovered (stability NaN)."""
    rows, _ = stored()
    q3 = rows.loc[(rows["query_id"] == "q3") & (rows["neuron"] == 5)]
    result = stability(rows, {"other seed": q3}, GROUPS, S)
    assert result.queries.to_dict("records") == [
        {"perturbation": "other seed", "query_id": "q3", "cluster_jaccard": 0.5, "qr_jaccard": 1.0, "qr_kept": 1.0}
    ]
    neurons = result.neurons.set_index("query_id")
    assert neurons.loc["q3", "stays"] == 1 and neurons.loc["q3", "stability"] == 1.0
    assert neurons.loc["q1", "of"] == 0 and np.isnan(neurons.loc["q1", "stability"])


def test_perturbations_that_cannot_be_formed_are_refused_in_one_line():
    rows, ig = stored()
    with pytest.raises(QRNError, match="at least two templates"):
        leave_one_template_out(rows, ig[:, :1], S)
    with pytest.raises(QRNError, match="z=cluster_sum"):
        leave_one_template_out(rows, ig, QRNCASettings(t=0.5, u=0.5, v=2, z="all_sum"))
    with pytest.raises(QRNError, match="query 'q9', which is not in the run"):
        stability(rows, {"other seed": rows.assign(query_id="q9")}, GROUPS, S)
