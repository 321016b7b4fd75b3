"""The DuckDB store: schema and migrations, refusing foreign files, runs, atomic writes, finalize, readers, locks."""

from math import log
import os
from pathlib import Path
import subprocess
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.runs import storing
from qrcore.selection import analysis, qrnca
from qrcore.settings import QRNCASettings, RunSettings
from qrcore.store import connection, schema, sql, writes
from repo import REPO

# The five queries of tests/test_qrnca.py as dense (2 layers, 3 neurons) NA maps; q1's (1, 2) is above the floor only.
# Each map is one template's IG; with the summed cluster and Z = max |score| the stored NA equals the map itself,
# so the hand-computed numbers below hold (tests/test_qrnca.py covers the other cluster and Z settings).
SETTINGS = RunSettings(qrnca=QRNCASettings(u=0.5, v=2, cluster="sum", z="max_abs"))
NA = {
    "q1": [[1.0, 0.6, 0.0], [0.3, 0.0, 0.1]],
    "q2": [[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]],
    "q3": [[0.0, 1.0, 0.0], [0.0, 0.9, 0.0]],
    "q4": [[0.5, 0.0, 0.0], [0.0, 0.0, 1.0]],
    "q5": [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
}
GROUP = {"q1": "g1", "q2": "g1", "q3": "g2", "q4": "g2", "q5": "g2"}
QUERIES = [
    Query(id=q, group=g, question=f"question {q}?", answer="yes", distractors=("no", "maybe"), meta={"fact": q.upper()})
    for q, g in GROUP.items()
]
TABLES = {
    "meta",
    "models",
    "datasets",
    "queries",
    "runs",
    "query_results",
    "attributions",
    "top_activations",
    "neuron_stats",
    "qr_neurons",
    "heatmaps",
    "evaluations",
    "top_queries",
    "top_queries_done",
}


def attribution(query_id: str) -> QueryAttribution:
    na = np.array(NA[query_id], np.float32)  # (layers, neurons), one template's IG
    return QueryAttribution(query_id, na[None], 2 * na, correct_prob=0.75, accuracy=1.0, seconds=0.5)


def new_run(con: duckdb.DuckDBPyConnection, name: str = "r1", settings: RunSettings = SETTINGS) -> str:
    model_id = store.upsert_model(con, "m" * 16, "tiny", "llama", 2, 3, "{}")
    dataset_id = store.upsert_dataset(con, "tiny", "test", QUERIES)
    return store.get_or_create_run(con, name, model_id, dataset_id, settings)


def finished_run(path: Path) -> str:
    with store.connect(path) as con:
        run_id = new_run(con)
        for query_id in NA:
            storing.write_query(con, run_id, attribution(query_id), SETTINGS.qrnca)
        storing.finalize_run(con, run_id)
    return run_id


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def raw(path: Path, *sql: str) -> None:
    with duckdb.connect(str(path)) as con:
        for statement in sql:
            con.execute(statement)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "qrn.duckdb"


# --- schema, migrations, foreign files -----------------------------------------------------------------------------


def test_new_store_has_all_tables_and_current_version(db):
    with store.connect(db) as con:
        tables = {r[0] for r in con.execute(connection.LIST_TABLES).fetchall()}
        meta = dict(con.execute(schema.SELECT_META).fetchall())
    assert tables == TABLES
    assert meta == {"app": "qr-neuron-explorer", "schema_version": "3"}
    assert schema.CODE_VERSION == "0.1.0+schema2"  # schema 3 only adds the top queries: run ids stay


def test_default_db_can_be_overridden_by_env(monkeypatch):
    monkeypatch.delenv("QRN_DB", raising=False)
    assert store.default_db() == "cache/qrn.duckdb"
    monkeypatch.setenv("QRN_DB", "/data/other.duckdb")
    assert store.default_db() == "/data/other.duckdb"


def test_v0_store_is_migrated_to_current(db):
    db.parent.mkdir()
    raw(
        db,
        "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        "INSERT INTO meta VALUES ('app', 'qr-neuron-explorer'), ('schema_version', '0')",
    )
    with store.connect(db, read_only=True) as con:
        assert {r[0] for r in con.execute(connection.LIST_TABLES).fetchall()} == TABLES
        assert dict(con.execute(schema.SELECT_META).fetchall())["schema_version"] == "3"


def test_v1_store_gains_the_template_ig_column_and_keeps_its_rows(db):
    db.parent.mkdir()
    raw(
        db,
        schema.CREATE_META,
        "INSERT INTO meta VALUES ('app', 'qr-neuron-explorer'), ('schema_version', '1')",
        *schema.SCHEMA_V1,
        "INSERT INTO attributions VALUES ('r', 'q', 1, 2, 0.5, true)",
    )
    with store.connect(db, read_only=True) as con:
        assert con.execute("SELECT layer, neuron, na, in_cluster, ig FROM attributions").fetchall() == [
            (1, 2, 0.5, True, None)
        ]


def test_migration_step_keeps_data(db, monkeypatch):
    with store.connect(db) as con:
        store.upsert_model(con, "m1", "tiny", "llama", 2, 3, "{}")
    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(
        schema,
        "MIGRATIONS",
        {**schema.MIGRATIONS, current: ["ALTER TABLE models ADD COLUMN note VARCHAR DEFAULT 'n/a'"]},
    )
    with store.connect(db) as con:
        assert con.execute("SELECT model_id, name, note FROM models").fetchall() == [("m1", "tiny", "n/a")]
        assert dict(con.execute(schema.SELECT_META).fetchall())["schema_version"] == str(current + 1)


def test_failed_migration_leaves_store_unchanged(db, monkeypatch):
    store.connect(db).close()
    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(
        schema,
        "MIGRATIONS",
        {**schema.MIGRATIONS, current: ["ALTER TABLE models ADD COLUMN note VARCHAR", "SELECT * FROM no_such_table"]},
    )
    with pytest.raises(
        QRNError,
        match=rf"could not upgrade .*qrn\.duckdb from store schema {current} to {current + 1} "
        r"\(Catalog Error.*\); the file is unchanged",
    ):
        store.connect(db)
    with duckdb.connect(str(db)) as con:
        assert dict(con.execute(schema.SELECT_META).fetchall())["schema_version"] == str(current)
        assert "note" not in [r[0] for r in con.execute("DESCRIBE models").fetchall()]


def test_newer_store_is_refused_untouched(db):
    store.connect(db).close()
    raw(db, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = fingerprint(db)
    with pytest.raises(QRNError) as err:
        store.connect(db)
    assert (
        str(err.value)
        == f"{db} has store schema 99, newer than this qrn's {schema.SCHEMA_VERSION}; upgrade qrn or pass another --db"
    )
    assert fingerprint(db) == before


@pytest.mark.parametrize("read_only", [False, True])
def test_foreign_duckdb_file_is_refused_untouched(db, read_only):
    db.parent.mkdir()
    raw(db, "CREATE TABLE sales (id INTEGER, amount DOUBLE)", "INSERT INTO sales VALUES (1, 9.5)")
    before = fingerprint(db)
    with pytest.raises(QRNError) as err:
        store.connect(db, read_only=read_only)
    assert str(err.value) == (
        f"{db} is not a QR Neuron Explorer store (no meta table); pass another --db or move the file away"
    )
    assert fingerprint(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["qrn.duckdb"]


def test_duckdb_file_with_someone_elses_meta_table_is_refused(db):
    db.parent.mkdir()
    raw(db, "CREATE TABLE meta (k INTEGER)")
    before = fingerprint(db)
    with pytest.raises(QRNError, match=r"is not a QR Neuron Explorer store \(its meta table is not ours\)"):
        store.connect(db)
    assert fingerprint(db) == before


@pytest.mark.parametrize("content", [b"", b"id,name\n1,foo\n" * 100])
def test_non_duckdb_file_is_refused_untouched(db, content):
    db.parent.mkdir()
    db.write_bytes(content)
    before = fingerprint(db)
    with pytest.raises(QRNError) as err:
        store.connect(db)
    assert str(err.value) == f"{db} is not a DuckDB database; pass another --db or move the file away"
    assert fingerprint(db) == before


def test_read_only_connect_to_missing_file_says_what_to_do(db):
    with pytest.raises(QRNError) as err:
        store.connect(db, read_only=True)
    assert str(err.value) == f"{db} does not exist; compute a run first (qrn run) or pass another --db"
    assert not db.parent.exists()


# --- datasets and runs ---------------------------------------------------------------------------------------------


def test_dataset_round_trip_and_identical_upsert_is_noop(db):
    with store.connect(db) as con:
        first = store.upsert_dataset(con, "tiny", "test", QUERIES)
        again = store.upsert_dataset(con, "tiny", "test", QUERIES)
        loaded = store.load_queries(con, "tiny")
        assert con.execute("SELECT count(*) FROM queries").fetchone() == (5,)
        assert store.load_queries(con, first) == loaded
    assert first == again and len(first) == 16
    assert loaded == QUERIES
    assert [q.meta for q in loaded] == [{"fact": q.upper()} for q in GROUP]


def test_dataset_name_with_other_content_is_refused(db):
    with store.connect(db) as con:
        store.upsert_dataset(con, "tiny", "test", QUERIES)
        with pytest.raises(QRNError) as err:
            store.upsert_dataset(con, "tiny", "test", QUERIES[:4])
        assert str(err.value) == (
            "dataset 'tiny' is already stored with other queries (5 stored, 4 given); "
            "import the new queries under another name, e.g. 'tiny-2'"
        )
        with pytest.raises(QRNError, match="dataset 'dup': query id 'q1' appears twice; give every query its own id"):
            store.upsert_dataset(con, "dup", "test", QUERIES + QUERIES[:1])
        with pytest.raises(QRNError, match="no dataset 'nope' in this store; import it first"):
            store.load_queries(con, "nope")
        assert con.execute("SELECT count(*) FROM datasets").fetchone() == (1,)


def test_same_run_name_same_inputs_resumes(db):
    with store.connect(db) as con:
        assert new_run(con) == new_run(con)
        assert con.execute("SELECT name, status FROM runs").fetchall() == [("r1", "running")]


def test_run_name_with_other_settings_names_the_difference(db):
    with store.connect(db) as con:
        new_run(con)
        other = RunSettings(qrnca=QRNCASettings(u=0.5, v=3, t=0.25, cluster="sum", z="max_abs"))
        with pytest.raises(QRNError) as err:
            new_run(con, settings=other)
        assert str(err.value) == (
            "run 'r1' already exists and differs in settings (qrnca.t 0.2 -> 0.25, "
            "qrnca.v 2 -> 3); choose another run name to compute a new run"
        )
        dataset_id = store.upsert_dataset(con, "tiny", "test", QUERIES)
        with pytest.raises(QRNError, match=r"differs in code version \(0\.1\.0\+schema2 -> 9\.9\)"):
            store.get_or_create_run(con, "r1", "m" * 16, dataset_id, SETTINGS, code_version="9.9")


def test_same_inputs_under_another_name_points_to_the_existing_run(db):
    with store.connect(db) as con:
        new_run(con, "r1")
        with pytest.raises(QRNError) as err:
            new_run(con, "r2")
    assert str(err.value) == (
        "run 'r1' already has this model, dataset, settings and code version; use the name 'r1' to resume or view it"
    )


# --- writing queries -----------------------------------------------------------------------------------------------


def counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    return tuple(
        con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("query_results", "attributions", "top_activations")
    )


def test_write_query_is_all_or_nothing(db, monkeypatch):
    real = sql.execute_with

    def fail_on_results(con, sql, frame, *params):
        if sql == writes.INSERT_RESULTS:
            assert counts(con)[1:] == (4, 6)  # attributions and activations are in, inside the transaction
            raise RuntimeError("disk full")
        real(con, sql, frame, *params)

    with store.connect(db) as con:
        run_id = new_run(con)
        monkeypatch.setattr(sql, "execute_with", fail_on_results)
        with pytest.raises(RuntimeError, match="disk full"):
            storing.write_query(con, run_id, attribution("q1"), SETTINGS.qrnca)
        assert counts(con) == (0, 0, 0)
        assert store.done_query_ids(con, run_id) == set()
        monkeypatch.setattr(sql, "execute_with", real)
        storing.write_query(con, run_id, attribution("q1"), SETTINGS.qrnca)
        storing.write_query(con, run_id, attribution("q1"), SETTINGS.qrnca)  # a rewrite replaces, never duplicates
        assert counts(con) == (1, 4, 6)
        assert store.done_query_ids(con, run_id) == {"q1"}
        assert con.execute(
            "SELECT layer, neuron, na, in_cluster FROM attributions ORDER BY layer, neuron"
        ).fetchall() == [
            (0, 0, 1.0, True),
            (0, 1, pytest.approx(0.6), True),
            (1, 0, pytest.approx(0.3), True),
            (1, 2, pytest.approx(0.1), False),
        ]


def test_top_activations_are_the_k_highest():
    acts = np.array([[1.0, 5.0, 3.0], [4.0, -1.0, 2.0]], np.float32)
    top = qrnca.top_activations(QueryAttribution("q", acts[None], acts, 0.5, 1.0), k=3)
    assert sorted(zip(top["activation"], top["layer"], top["neuron"]), reverse=True) == [
        (5.0, 0, 1),
        (4.0, 1, 0),
        (3.0, 0, 2),
    ]


# --- finalize and readers ------------------------------------------------------------------------------------------


def test_readers_need_a_finalized_run(db):
    with store.connect(db) as con:
        new_run(con)
        with pytest.raises(QRNError) as err:
            run_analyses.heatmap(con, "r1", "g1")
        assert str(err.value) == "run 'r1' has no run-level results yet; they are computed when its run finishes"
        with pytest.raises(QRNError, match="no run 'r9' in this store; stored runs: r1"):
            run_analyses.overlap(con, "r9")


def test_finalize_writes_qr_neurons_stats_and_heatmaps(db):
    run_id = finished_run(db)
    with store.connect(db, read_only=True) as con:
        runs = store.list_runs(con)
        assert runs[["name", "model", "dataset", "status", "n_done", "n_queries"]].values.tolist() == [
            ["r1", "tiny", "tiny", "finished", 5, 5]
        ]
        qr = store.qr_neurons(con, "r1", "qrnca")
        assert list(zip(qr["query_id"], qr["rank"], qr["layer"], qr["neuron"])) == [
            ("q1", 1, 0, 1),
            ("q2", 1, 1, 1),
            ("q3", 1, 0, 1),
            ("q3", 2, 1, 1),
            ("q4", 1, 1, 2),
            ("q5", 1, 1, 0),
        ]
        assert qr["score"].tolist() == pytest.approx(
            [0.6 * log(5 / 3), 0.5 * log(5 / 3), log(5 / 3), 0.9 * log(5 / 3), log(5 / 2), log(5 / 3)]
        )
        per_method = con.execute("SELECT method, count(*) FROM qr_neurons GROUP BY method ORDER BY method").fetchall()
        assert per_method == [
            ("activation", 6),
            ("kn", 6),
            ("qrnca", 6),
            ("qrnca_no_ica", 6),
            ("qrnca_with_common", 9),
            ("random", 6),
        ]
        assert run_analyses.common_neurons(con, run_id).to_dict("records") == [
            {"layer": 0, "neuron": 0, "n_clusters": 3, "frequency": 0.6}
        ]
        assert store.heatmap_groups(con, run_id) == ["g1", "g2"]
        assert run_analyses.heatmap(con, run_id, "g1") == pytest.approx(
            np.array([[2 * log(5 / 4), 0.6 * log(5 / 3), 0.0], [0.3 * log(5 / 3), 0.5 * log(5 / 3), 0.0]])
        )
        with pytest.raises(QRNError, match="run 'r1' has no group 'g7'; groups: g1, g2"):
            run_analyses.heatmap(con, run_id, "g7")
        # Readers use qrcore.selection.analysis on the stored QR neurons.
        pd.testing.assert_frame_equal(run_analyses.overlap(con, run_id), analysis.overlap_matrix(qr, GROUP))
        assert run_analyses.overlap(con, run_id).loc["g1", "g2"] == pytest.approx(2 / 4)  # {B, D} vs {B, C, D, E}
        # g1: B in layer 0, D in layer 1; g2: B in layer 0, C, D, E in layer 1.
        assert run_analyses.layer_distribution(con, run_id).to_numpy() == pytest.approx(
            np.array([[0.5, 0.5], [0.25, 0.75]])
        )
        with pytest.raises(QRNError, match="unknown method 'best'; choose one of qrnca, random"):
            store.qr_neurons(con, run_id, "best")


def test_query_neurons_explain_each_stored_neuron(db):
    run_id = finished_run(db)
    with store.connect(db, read_only=True) as con:
        rows = run_analyses.query_neurons(con, run_id, "q1")
        with pytest.raises(QRNError, match="run 'r1' has no stored neurons for query 'q9'"):
            run_analyses.query_neurons(con, run_id, "q9")
    assert rows.columns.tolist() == [
        "layer",
        "neuron",
        "na",
        "in_cluster",
        "ig",
        "n_clusters",
        "ica",
        "is_common",
        "naica",
        "naica_rank",
        "kept",
        "reason",
    ]
    assert list(zip(rows["layer"], rows["neuron"], rows["n_clusters"], rows["kept"], rows["reason"])) == [
        (0, 1, 2, True, qrnca.REASONS["kept"]),
        (0, 0, 3, False, qrnca.REASONS["common"]),
        (1, 0, 2, False, qrnca.REASONS["beyond_v"]),
        (1, 2, 1, False, qrnca.REASONS["not_cluster"]),
    ]
    assert rows["naica"].tolist() == pytest.approx([0.6 * log(5 / 3), log(5 / 4), 0.3 * log(5 / 3), 0.1 * log(5 / 2)])


def test_evaluations_are_replaced_per_method_and_evaluation(db):
    run_id = finished_run(db)
    rows = pd.DataFrame({"group_name": ["g1", "g2"], "metric": ["pcr", "pcr"], "value": [3.5, 1.25]})
    with store.connect(db) as con:
        store.write_evaluations(con, run_id, "qrnca", "suppress", rows)
        store.write_evaluations(con, run_id, "qrnca", "suppress", rows.assign(value=[4.0, 2.0]))
        store.write_evaluations(con, run_id, "kn", "suppress", rows)
        out = store.evaluations(con, "r1")
    assert out.values.tolist() == [
        ["kn", "suppress", "g1", "pcr", 3.5],
        ["kn", "suppress", "g2", "pcr", 1.25],
        ["qrnca", "suppress", "g1", "pcr", 4.0],
        ["qrnca", "suppress", "g2", "pcr", 2.0],
    ]


# --- concurrency ---------------------------------------------------------------------------------------------------


def run_python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_second_writer_gets_a_clear_message(db):
    with store.writer_lock(db):
        with pytest.raises(QRNError) as err:
            with store.writer_lock(db):
                pass
        assert str(err.value) == (
            f"{db} is being written by another qrn run (pid {os.getpid()}); wait for it to finish or use another --db"
        )
        other = run_python(f"from qrcore import store\nwith store.writer_lock({str(db)!r}): pass")
        assert other.wait(30) == 1
        assert f"is being written by another qrn run (pid {os.getpid()})" in other.stderr.read()
    with store.writer_lock(db):  # released
        pass


def test_reader_reads_while_the_writer_lock_is_held(db):
    finished_run(db)
    with store.writer_lock(db):
        with store.connect(db, read_only=True) as con:
            assert store.list_runs(con)["status"].tolist() == ["finished"]


def test_reader_waits_for_a_writer_in_another_process(db):
    finished_run(db)
    writer = run_python(
        f"import duckdb, time\ncon = duckdb.connect({str(db)!r})\nprint('open', flush=True)\n"
        "time.sleep(1.5)\ncon.close()"
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(QRNError) as err:
            store.connect(db, read_only=True, wait=0.2)
        assert str(err.value) == (
            f"{db} is in use by another process (pid {writer.pid}) for more than 0.2 s; "
            "try again when it is done or use another --db"
        )
        start = time.monotonic()
        with store.connect(db, read_only=True, wait=20) as con:  # retries until the writer has closed
            assert store.list_runs(con)["name"].tolist() == ["r1"]
        assert time.monotonic() - start < 15
    finally:
        assert writer.wait(30) == 0


# --- benchmark -----------------------------------------------------------------------------------------------------


def test_synthetic_store_builds_a_finished_run_and_times_every_reader(tmp_path):
    from qrbench import store as bench_store

    path = tmp_path / "bench.duckdb"
    run_id = bench_store.build_synthetic_store(
        path, n_queries=60, n_layers=4, n_neurons=50, rows_per_query=20, groups=3
    )
    with store.connect(path, read_only=True) as con:
        info = store.run_info(con, run_id)
        assert (info.name, info.status, info.n_clusters, info.n_layers, info.n_neurons) == (
            "synthetic",
            "finished",
            60,
            4,
            50,
        )
        assert store.heatmap_groups(con, run_id) == ["group0", "group1", "group2"]
    table = bench_store.bench_store(path, repeats=1, out=None)
    assert table["reader"].tolist() == [
        "checksum pass (first open)",
        "connect read-only + close",
        "list_runs",
        "heatmap (one group)",
        "heatmap_groups",
        "overlap",
        "layer_distribution",
        "common_neurons",
        "query_neurons",
        "qr_neurons (one query)",
        "evaluations",
    ]
    assert (table["ms"] > 0).all()
    with pytest.raises(QRNError, match="already exists; the benchmark builds a new store"):
        bench_store.build_synthetic_store(path)
