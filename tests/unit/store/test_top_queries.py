"""The top queries in the store: schema 3 added to a schema-2 store without changing its runs' ids, written and read
back, exported, and loaded into a store whose runs lack them (the shipped runs of an earlier start)."""

from __future__ import annotations

from pathlib import Path
import shutil

import duckdb
import numpy as np
import pytest

from qrcore import store
from qrcore.selection.activations import TopQueries
from qrcore.store import schema
from seeded_store import QUERIES, RUN, seed_store


@pytest.fixture
def seeded_top(tmp_path: Path, tiny) -> tuple[Path, str, TopQueries]:
    """The tiny run with synthetic top queries (3 per neuron) of its queries stored."""
    db = tmp_path / "qrn.duckdb"
    run_id = seed_store(db, tiny("llama"))
    rng = np.random.default_rng(0)
    top = TopQueries.empty((4, 96), k=3)
    for q in QUERIES:
        top.add(q.id, rng.normal(size=(4, 96)).astype(np.float32))
    with store.connect(db) as con:
        store.write_top_queries(con, run_id, top.rows(), top.query_ids)
    return db, run_id, top


def top_rows(db: Path, run_id: str):
    with store.connect(db, read_only=True) as con:
        return store.read_top_queries(con, run_id)


def test_schema_2_store_gains_the_tables_and_keeps_its_run_ids(tmp_path):
    db = tmp_path / "qrn.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(schema.CREATE_META)
        con.execute("INSERT INTO meta VALUES ('app', 'qr-neuron-explorer'), ('schema_version', '2')")
        for sql in schema.SCHEMA_V1 + schema.SCHEMA_V2:
            con.execute(sql)
        con.execute(
            "INSERT INTO runs (run_id, name, model_id, dataset_id, settings_json, code_version, status) "
            "VALUES ('r1', 'old', 'm', 'd', '{}', '0.1.0+schema2', 'finished')"
        )
    with store.connect(db, read_only=True) as con:
        assert con.execute("SELECT run_id, code_version FROM runs").fetchall() == [("r1", schema.CODE_VERSION)]
        assert store.read_top_queries(con, "r1")[1] == []
        assert store.neuron_top_queries(con, "r1", 0, 0).empty


def test_written_rows_read_back_per_neuron_highest_first(seeded_top):
    db, run_id, top = seeded_top
    rows, done = top_rows(db, run_id)
    assert sorted(done) == sorted(q.id for q in QUERIES) and len(rows) == 4 * 96 * 3
    with store.connect(db, read_only=True) as con:
        card = store.neuron_top_queries(con, run_id, 2, 7)
        assert store.top_queries_done(con, run_id) == len(QUERIES)
    order = np.argsort(-top.values[:, 2, 7])  # the three kept, highest first
    assert card["query_id"].tolist() == [top.query_ids[top.slots[k, 2, 7]] for k in order]
    np.testing.assert_array_equal(card["activation"], top.values[order, 2, 7])


def test_export_import_carries_the_top_queries(seeded_top, tmp_path):
    db, run_id, _ = seeded_top
    with store.connect(db) as con:
        counts = store.export_runs(con, [RUN], tmp_path / "out")
    assert counts["top_queries"] == 4 * 96 * 3 and counts["top_queries_done"] == len(QUERIES)
    other = tmp_path / "other.duckdb"
    with store.connect(other) as con:
        assert store.import_runs(con, tmp_path / "out")
    assert top_rows(other, run_id)[0].equals(top_rows(db, run_id)[0])


def test_a_stored_run_without_top_queries_gets_them_from_a_later_export(seeded_top, tmp_path):
    db, run_id, _ = seeded_top
    with store.connect(db) as con:
        store.export_runs(con, [RUN], tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    for table in ("top_queries", "top_queries_done"):
        (old / f"{table}.parquet").unlink()
    other = tmp_path / "other.duckdb"
    with store.connect(other) as con:
        assert store.import_runs(con, old)  # an export of before schema 3 loads
        assert store.has_runs(con, old) and not store.has_runs(con, tmp_path / "new")
        assert store.read_top_queries(con, run_id)[1] == []
        assert store.import_runs(con, tmp_path / "new")  # only the top queries are added
        assert store.has_runs(con, tmp_path / "new") and not store.import_runs(con, tmp_path / "new")
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert top_rows(other, run_id)[0].equals(top_rows(db, run_id)[0])


def test_shipped_smollm2_runs_carry_their_top_queries(tmp_path):
    from qrcore.selection.activations import TOP_QUERIES
    from qrcore.store.shipped import SHIPPED

    db = tmp_path / "shipped.duckdb"
    with store.connect(db) as con:
        store.import_runs(con, SHIPPED)
        runs = store.list_runs(con).set_index("name")
        for name in ("domain-smollm2", "language-smollm2"):
            info = store.run_info(con, name)
            rows, done = store.read_top_queries(con, info.run_id)
            assert (
                sorted(done) == sorted(store.done_query_ids(con, info.run_id)) and len(done) == runs.at[name, "n_done"]
            )
            assert len(rows) == info.n_layers * info.n_neurons * TOP_QUERIES
            assert set(rows["query_id"]) <= set(done)


@pytest.mark.slow
def test_shipped_top_queries_match_a_recomputed_query(smollm2, tmp_path):
    """One shipped query recomputed on SmolLM2: where it is stored its activation is the same, and where it is not,
    every kept query of that neuron is at least as active."""
    from qrcore.selection.activations import answer_activations
    from qrcore.store.shipped import SHIPPED

    db = tmp_path / "shipped.duckdb"
    with store.connect(db) as con:
        store.import_runs(con, SHIPPED)
        info = store.run_info(con, "language-smollm2")
        query = store.load_queries(con, store.run_dataset_id(con, info.run_id))[0]
        rows, _ = store.read_top_queries(con, info.run_id)
    f = next(answer_activations(smollm2, [query], info.settings))  # (layers, neurons)
    mine = rows.loc[rows["query_id"] == query.id]
    assert len(mine) > 0
    np.testing.assert_allclose(mine["activation"], f[mine["layer"], mine["neuron"]], rtol=1e-3, atol=1e-4)
    lowest = rows.groupby(["layer", "neuron"])["activation"].min()
    absent = ~lowest.index.isin(list(zip(mine["layer"], mine["neuron"])))
    layer, neuron = np.array(lowest.index[absent].tolist()).T
    assert (lowest[absent].to_numpy() >= f[layer, neuron] - 1e-4).all()
