"""Live thresholds, template consistency, a custom question scored against a run, and neuron cards, from the store."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from qrcore import store
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.selection import live, qrnca
from qrcore.selection.consistency import dense_consistency, template_consistency
from qrcore.selection.custom import score_against_run
from qrcore.settings import QRNCASettings, RunSettings
from seeded_store import QUERIES, synthetic_attribution, write_run

SHAPE = (4, 96)
SETTINGS = {
    "template/cluster_sum": QRNCASettings(),
    "template/all_sum": QRNCASettings(z="all_sum"),
    "sum/cluster_sum": QRNCASettings(cluster="sum"),
    "sum/all_sum": QRNCASettings(cluster="sum", z="all_sum"),
    "sum/max_abs": QRNCASettings(cluster="sum", z="max_abs"),
}


def attributions(seed: int = 0, queries=QUERIES) -> list:
    """Three-template synthetic attributions of the test queries."""
    rng = np.random.default_rng(seed)
    return [synthetic_attribution(q, SHAPE, rng) for q in queries]


def open_store(tmp_path, attrs, **runs: RunSettings):
    """A store with one finished run per keyword (name=settings) over the same attributions; returns the path."""
    path = tmp_path / "live.duckdb"
    with store.connect(path) as con:
        model_id = store.upsert_model(con, "m0", "synthetic", "none", *SHAPE, "{}")
        dataset_id = store.upsert_dataset(con, "set", "test", QUERIES[: len(attrs)])
        for name, settings in runs.items():
            write_run(con, name, model_id, dataset_id, attrs, settings)
    return path


def stored(attrs, s: QRNCASettings) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows and IG a run with settings `s` stores for the attributions."""
    rows = pd.concat([qrnca.sparsify(a, s) for a in attrs], ignore_index=True)
    return rows.drop(columns="ig"), np.stack(rows["ig"].to_numpy())


@pytest.mark.parametrize("kind", SETTINGS)
@pytest.mark.parametrize("t", [0.05, 0.12, 0.35, 0.6])
def test_recluster_gives_the_na_and_cluster_of_the_full_attribution_at_another_t(kind, t):
    s = SETTINGS[kind]
    attrs = attributions()
    rows, ig = stored(attrs, s)
    for with_ig in [True, False] if s.cluster == "sum" else [True]:
        got = live.recluster(rows, ig if with_ig else None, s, t)
        for a in attrs:
            full = qrnca.query_na(a.ig, replace(s, t=t))
            mine = got.loc[got["query_id"] == a.query_id]
            layer, neuron = mine["layer"].to_numpy(), mine["neuron"].to_numpy()
            np.testing.assert_array_equal(mine["in_cluster"].to_numpy(), full.in_cluster[layer, neuron])
            assert mine["in_cluster"].sum() == full.in_cluster.sum()  # every cluster neuron at t is a stored row
            np.testing.assert_allclose(mine["na"].to_numpy(), full.na[layer, neuron], rtol=2e-5, atol=1e-7)


def test_recluster_refuses_what_the_stored_rows_cannot_give():
    rows, ig = stored(attributions(), QRNCASettings())
    with pytest.raises(QRNError, match=r"^this run keeps no per-template IG .*; keep t = 0.2 \(u and v can change\)"):
        live.recluster(rows, None, QRNCASettings(), 0.3)
    with pytest.raises(QRNError, match="z=max_abs and per-template clusters"):
        live.recluster(rows, ig, QRNCASettings(z="max_abs"), 0.3)
    assert live.recluster(rows, None, QRNCASettings(), 0.2)["na"].equals(rows["na"])  # the run's own t: as stored


@pytest.mark.parametrize(
    ("t", "u", "v", "message"),
    [
        (
            0.01,
            0.3,
            20,
            r"^t = 0.01 is outside 0.05-0.99: the run stores only neurons above its floor 0.05 .*pick t from",
        ),
        (1.0, 0.3, 20, r"^t = 1 is outside 0.05-0.99"),
        (0.2, 0.0, 20, r"^u = 0 is outside 0.01-1 .*; pick u from 0.01 to 1\.$"),
        (0.2, 0.3, 0, r"^v = 0 is not a whole number from 1 to 1000; pick v in that range\.$"),
        (0.2, 0.3, 2.5, r"^v = 2.5 is not a whole number"),
    ],
)
def test_thresholds_out_of_range_get_one_line(t, u, v, message):
    with pytest.raises(QRNError, match=message):
        live.check_thresholds(QRNCASettings(), t, u, v)


def test_live_thresholds_equal_a_run_computed_with_them(tmp_path):
    other = QRNCASettings(t=0.35, u=0.5, v=5)
    path = open_store(tmp_path, attributions(), base=RunSettings(), other=RunSettings(qrnca=other))
    with store.connect(path, read_only=True) as con:
        for name, (t, u, v) in {"base": (0.2, 0.3, 20), "other": (0.35, 0.5, 5)}.items():
            got = run_analyses.qrnca_at(con, "base", t, u, v)
            want_qr = store.qr_neurons(con, name)
            pd.testing.assert_frame_equal(got.qr.reset_index(drop=True), want_qr, check_dtype=False, atol=1e-6)
            pd.testing.assert_frame_equal(got.common, run_analyses.common_neurons(con, name), check_dtype=False)
            for group in store.heatmap_groups(con, name):
                part = got.heat.loc[got.heat["group_name"] == group]
                np.testing.assert_allclose(
                    run_analyses.heatmap(con, name, group)[part["layer"], part["neuron"]], part["score"], rtol=1e-5
                )
            assert got.qr_per_query.sum() == len(want_qr) and len(got.qr_per_query) == len(QUERIES)
            kept = got.rows.loc[got.rows["kept"]]
            assert set(zip(kept["query_id"], kept["layer"], kept["neuron"])) == set(
                zip(want_qr["query_id"], want_qr["layer"], want_qr["neuron"])
            )


def test_fewer_common_neurons_with_a_higher_u():
    rows, ig = stored(attributions(), QRNCASettings())
    groups = {q.id: q.group for q in QUERIES}
    counts = [len(live.at_thresholds(rows, ig, groups, QRNCASettings(), 0.2, u, 20).common) for u in (0.1, 0.3, 1.0)]
    assert counts[0] > counts[2] and counts == sorted(counts, reverse=True)
    assert counts[2] == 0 and counts[0] >= 2  # (1, 50) and (3, 7) are in every cluster


def test_template_consistency_by_hand():
    # one query, three templates over four neurons; sets at t = 0.5: {0, 1}, {0}, {0, 2}
    ig = np.array([[1.0, 1.0, 0.9], [0.8, 0.1, 0.0], [0.0, 0.0, 1.0], [0.1, 0.2, 0.3]], np.float32)
    out = template_consistency(pd.Series(["q"] * 4), ig, 0.5).iloc[0]
    assert out["cluster"] == 3 and out["in_all"] == pytest.approx(1 / 3)
    assert out["agreement"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert list(out["template_sizes"]) == [2, 1, 2]
    one = template_consistency(pd.Series(["q"] * 4), ig[:, :1], 0.5).iloc[0]
    assert np.isnan(one["agreement"]) and one["in_all"] == 1


def test_template_consistency_from_the_store_equals_the_full_attribution(tmp_path):
    attrs = attributions()
    path = open_store(tmp_path, attrs, base=RunSettings())
    with store.connect(path, read_only=True) as con:
        assert store.has_template_ig(con, "base")
        for t in (0.2, 0.4):
            table = run_analyses.template_consistency(con, "base", t).set_index("query_id")
            for a in attrs:
                want = dense_consistency(a.query_id, a.ig, t)
                assert table.loc[a.query_id, ["cluster", "in_all", "agreement"]].tolist() == pytest.approx(
                    want[["cluster", "in_all", "agreement"]].tolist()
                )
        assert set(table["group_name"]) == {"science", "geography"}
        assert 0 < table["agreement"].mean() < 1  # the templates agree in part
        with pytest.raises(QRNError, match=r"^t = 0.01 is outside"):
            run_analyses.template_consistency(con, "base", 0.01)
        con.close()
    with store.connect(path) as con:
        con.execute("UPDATE attributions SET ig = NULL")
        assert not store.has_template_ig(con, "base")
        with pytest.raises(QRNError, match="stored without per-template IG .* not available for it; recompute"):
            run_analyses.template_consistency(con, "base")


def test_custom_question_gets_the_qr_neurons_it_would_get_as_one_more_run_query(tmp_path):
    attrs = attributions()
    path = open_store(tmp_path, attrs[:-1], run=RunSettings())
    with store.connect(path, read_only=True) as con:
        counts, n_clusters = store.cluster_counts(con, "run")
    rows = score_against_run(attrs[-1], counts, n_clusters, QRNCASettings())
    both = pd.concat([qrnca.sparsify(a, QRNCASettings()).drop(columns="ig") for a in attrs], ignore_index=True)
    groups = {q.id: q.group for q in QUERIES}
    want = qrnca.qr_neurons(both, groups, QRNCASettings())
    want = want.loc[want["query_id"] == attrs[-1].query_id]
    kept = rows.loc[rows["kept"]].sort_values("naica_rank")
    assert list(zip(kept["layer"], kept["neuron"])) == list(zip(want["layer"], want["neuron"]))
    np.testing.assert_allclose(kept["naica"], want["score"], rtol=1e-9)
    stats = qrnca.neuron_stats(both, len(groups), 0.3).set_index(["layer", "neuron"])
    mine = rows.set_index(["layer", "neuron"])
    np.testing.assert_allclose(mine["ica"], stats.loc[mine.index, "ica"])  # |C| + 1 clusters, its own included
    assert mine["is_common"].equals(stats.loc[mine.index, "is_common"])
    assert rows["is_common"].any() and not kept["is_common"].any()


def test_neuron_card_from_the_store(tmp_path):
    attrs = attributions()
    path = open_store(tmp_path, attrs, run=RunSettings())
    with store.connect(path, read_only=True) as con:
        card = run_analyses.neuron_card(con, "run", 1, 50)
        stats = con.execute(
            "SELECT n_clusters, ica, is_common FROM neuron_stats WHERE layer = 1 AND neuron = 50"
        ).fetchone()
        qr = store.qr_neurons(con, "run")
        with pytest.raises(QRNError, match=r"^neuron 4:0 is outside this run's model \(layers 0-3, neurons 0-95\)"):
            run_analyses.neuron_card(con, "run", 4, 0)
        with pytest.raises(QRNError, match=r"neurons 0-95\)"):
            run_analyses.neuron_card(con, "run", 0, 96)
    assert (card.n_clusters, card.ica, card.is_common) == (stats[0], pytest.approx(stats[1]), stats[2])
    assert card.frequency == stats[0] / len(QUERIES) and card.is_common  # (1, 50) is in every query's cluster
    assert sorted(card.queries["query_id"]) == sorted(q.id for q in QUERIES)
    mine = qr.loc[(qr["layer"] == 1) & (qr["neuron"] == 50)].set_index("query_id")["rank"]
    assert card.queries.set_index("query_id")["qr_rank"].reindex(mine.index).tolist() == mine.tolist()
    np.testing.assert_allclose(card.queries["naica"], card.queries["na"] * card.ica)
    assert list(card.groups["group_name"]) == ["geography", "science"] and card.groups["clusters"].sum() == 6
    group_na = card.queries.groupby("group_name")["na"].sum() / 3
    np.testing.assert_allclose(card.groups.set_index("group_name")["mean_na"], group_na.sort_index())
