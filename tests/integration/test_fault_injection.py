"""Fault injection (issue 13): a writer SIGKILLed at random points of `write_query`, `finalize_run`, a merge of shards
and a migration, KILLS times each. After every kill the store opens, no finished query is lost or doubled, and a rerun
completes with the rows a run that was never killed has.

The writer is a forked copy of this process (so it starts in milliseconds, with nothing to import), killed a seeded
random time after it starts, within the time the same work takes unkilled. Attributions are synthetic, of the tiny
models' shape (4 layers x 96 neurons), so that no model runs.
"""

from __future__ import annotations

from collections.abc import Callable
import hashlib
import os
from pathlib import Path
import random
import shutil
import signal
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.runs import shards, storing
from qrcore.selection import qrnca
from qrcore.settings import RunSettings
from qrcore.store import schema
from seeded_store import MODEL, synthetic_attribution

KILLS = 6
"""Kills per phase (write_query, finalize_run, merge, migration): 24 in all."""
SHAPE = (4, 96)
SETTINGS = RunSettings()
QUERIES = [
    Query(
        id=f"q{i:02d}",
        group=("science", "geography")[i % 2],
        question=f"Question {i}?",
        answer="yes",
        distractors=("no", "maybe"),
    )
    for i in range(8)
]
DERIVED = {
    "neuron_stats": "layer, neuron, n_clusters, ica, is_common",
    "qr_neurons": "method, query_id, rank, layer, neuron, score",
    "heatmaps": "group_name, layer, neuron, score",
}
MIGRATION = [
    "ALTER TABLE attributions ADD COLUMN doubled REAL",
    "UPDATE attributions SET doubled = 2 * na",
    "CREATE TABLE attribution_sums AS SELECT run_id, query_id, sum(na) AS total FROM attributions GROUP BY ALL",
]
"""A next schema version for the migration phase: a new column filled from the old ones, and a new table."""
NEXT = schema.SCHEMA_VERSION + 1
UPGRADE = {**schema.MIGRATIONS, schema.SCHEMA_VERSION: MIGRATION}
"""The migrations with MIGRATION taking the current schema to NEXT."""


def attribution(query: Query) -> QueryAttribution:
    """The query's synthetic attribution, the same on every call."""
    return synthetic_attribution(query, SHAPE, np.random.default_rng(QUERIES.index(query)))


def expected_rows() -> dict[str, tuple[int, int]]:
    """query id -> (attribution rows, top activation rows) that storing the query writes."""
    return {q.id: (len(qrnca.sparsify(attribution(q), SETTINGS.qrnca)), qrnca.TOP_ACTIVATIONS) for q in QUERIES}


def fork(work: Callable[[int], None], fd: int) -> int:
    """Run work(fd) in a forked child that exits with 0 when it is done, 1 if it raised; the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            work(fd)
            code = 0
        finally:
            os._exit(code)
    return pid


def kill_during(work: Callable[[int], None], delay: float, after_mark: bool = False) -> tuple[bool, list[str]]:
    """Fork a child that runs work(fd), SIGKILL it `delay` s later (counted from its first byte on fd if
    `after_mark`, so the start-up's jitter does not move the kill out of the window); (was it still running,
    the lines it wrote to fd)."""
    read, write = os.pipe()
    pid = fork(work, write)
    os.close(write)
    marked = os.read(read, 1) if after_mark else b""
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)  # an exited child is a zombie until waited for, so this never hits another process
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        lines = (marked.decode() + f.read()).split()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WEXITSTATUS(status) == 0, "the writer failed by itself"
    return killed, lines


def unkilled_seconds(work: Callable[[int], None]) -> float:
    """How long the work takes in a forked child that is left to finish."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        _, status = os.waitpid(fork(work, sink.fileno()), 0)
    assert status == 0, "the writer failed by itself"
    return time.perf_counter() - start


def kill_repeatedly(
    base: Path | None, db: Path, work: Callable[[int], None], check: Callable[[list[str]], None], rng: random.Random
) -> int:
    """Restore `db` from `base` (if given), kill `work` at a random point, then `check`; KILLS times. The kills."""

    def fresh() -> None:
        for p in db.parent.iterdir():
            p.unlink()
        if base is not None:
            shutil.copy(base, db)

    fresh()
    seconds = unkilled_seconds(work)
    kills = 0
    for _ in range(4 * KILLS):
        fresh()
        killed, lines = kill_during(work, rng.uniform(0.0, seconds))
        if killed:
            check(lines)
            kills += 1
        if kills == KILLS:
            break
    return kills


def stored_rows(db: Path, run_id: str) -> dict[str, tuple[int, int]]:
    """query id -> (attribution rows, top activation rows) of every query the store has a result for (opens it)."""
    with store.connect(db, read_only=True) as con:
        done = store.done_query_ids(con, run_id)
        rows = {
            t: dict(
                con.execute(f"SELECT query_id, count(*) FROM {t} WHERE run_id = ? GROUP BY ALL", [run_id]).fetchall()
            )
            for t in ("attributions", "top_activations")
        }
    assert set(rows["attributions"]) <= done and set(rows["top_activations"]) <= done  # no rows of unstored queries
    return {q: (rows["attributions"].get(q, 0), rows["top_activations"].get(q, 0)) for q in done}


def derived(db: Path, run_id: str) -> dict[str, pd.DataFrame]:
    """The rows finalize_run writes, sorted."""
    with store.connect(db, read_only=True) as con:
        return {
            t: con.execute(f"SELECT {cols} FROM {t} WHERE run_id = ? ORDER BY ALL", [run_id]).df()
            for t, cols in DERIVED.items()
        }


def new_run(db: Path, lm) -> str:
    """Store the model, dataset and run of QUERIES; the run id."""
    with store.connect(db) as con:
        store.upsert_model(con, lm.fingerprint, MODEL, "llama", *SHAPE, "{}")
        dataset_id = store.upsert_dataset(con, "fault", "test", QUERIES)
        return store.get_or_create_run(con, "fault", lm.fingerprint, dataset_id, SETTINGS)


def write_all(db: Path, run_id: str, report: int | None = None) -> None:
    """Store every query not stored yet, one connection and transaction each (as `qrn run` does)."""
    with store.connect(db, read_only=True) as con:
        done = store.done_query_ids(con, run_id)
    for q in QUERIES:
        if q.id not in done:
            with store.connect(db) as con:
                storing.write_query(con, run_id, attribution(q), SETTINGS.qrnca)
            if report is not None:
                os.write(report, f"{q.id}\n".encode())


def finalize(db: Path, run_id: str) -> None:
    """finalize_run on a connection of its own."""
    with store.connect(db) as con:
        storing.finalize_run(con, run_id)


def digest(path: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_killed_writers_lose_or_double_nothing_and_reruns_complete(tmp_path, tiny, monkeypatch, capsys):
    rng = random.Random(13)
    expected = expected_rows()
    lm = tiny("llama")
    ref = tmp_path / "ref" / "qrn.duckdb"  # the unkilled run everything is compared with
    run_id = new_run(ref, lm)
    empty = tmp_path / "empty.duckdb"
    shutil.copy(ref, empty)
    write_all(ref, run_id)
    unfinished = tmp_path / "unfinished.duckdb"
    shutil.copy(ref, unfinished)
    finalize(ref, run_id)
    reference = derived(ref, run_id)
    db = tmp_path / "work" / "qrn.duckdb"
    db.parent.mkdir()
    kills = {}

    def complete() -> None:
        """The rerun: store what is missing, finalize, and compare with the unkilled run."""
        write_all(db, run_id)
        finalize(db, run_id)
        assert stored_rows(db, run_id) == expected
        for table, frame in derived(db, run_id).items():
            pd.testing.assert_frame_equal(frame, reference[table])

    def after_write_kill(reported: list[str]) -> None:
        stored = stored_rows(db, run_id)
        in_flight = QUERIES[len(reported)].id if len(reported) < len(QUERIES) else None
        assert set(reported) <= set(stored) <= {*reported, in_flight}  # nothing finished lost, no half query
        assert stored == {q: expected[q] for q in stored}  # every stored query whole and once
        complete()

    kills["write_query"] = kill_repeatedly(empty, db, lambda fd: write_all(db, run_id, fd), after_write_kill, rng)

    def after_finalize_kill(_: list[str]) -> None:
        assert stored_rows(db, run_id) == expected
        with store.connect(db, read_only=True) as con:
            finished = store.run_info(con, run_id).status == "finished"
        rows = derived(db, run_id)
        for table, frame in rows.items():  # the derived rows are all there (with the finished mark) or none are
            if finished:
                pd.testing.assert_frame_equal(frame, reference[table])
            else:
                assert frame.empty, table
        complete()

    kills["finalize_run"] = kill_repeatedly(unfinished, db, lambda fd: finalize(db, run_id), after_finalize_kill, rng)

    folder = tmp_path / "shards"  # a data-parallel run's shards of every query, from two ranks
    manifest = shards.make_manifest(lm, "fault", "fault", "test", QUERIES, SETTINGS)
    shards.write_manifest(folder, manifest)
    with store.connect(ref, read_only=True) as con:
        key = shards.key_of({**manifest, "dataset": store.run_dataset_id(con, run_id)})
    for i, q in enumerate(QUERIES):
        shards.write_shard(folder, i % 2, key, attribution(q), SETTINGS.qrnca)

    def after_merge_kill(_: list[str]) -> None:
        if db.exists():
            assert len(stored_rows(db, run_id)) in (0, len(QUERIES))  # one transaction: all shards or none
        assert shards.merge_shards(folder, db)[0] == run_id
        complete()

    kills["merge"] = kill_repeatedly(None, db, lambda fd: shards.merge_shards(folder, db), after_merge_kill, rng)

    original = digest(ref)

    def upgrade(fd: int) -> None:
        schema.SCHEMA_VERSION, schema.MIGRATIONS = NEXT, UPGRADE  # only in the child
        store.connect(db).close()

    def after_migration_kill(_: list[str]) -> None:
        with duckdb.connect(str(db), read_only=True) as con:
            version = dict(con.execute(schema.SELECT_META).fetchall())["schema_version"]
        assert version == str(NEXT) or digest(db) == original  # upgraded whole, or not touched at all
        with monkeypatch.context() as m:
            m.setattr(schema, "SCHEMA_VERSION", NEXT)
            m.setattr(schema, "MIGRATIONS", UPGRADE)
            with store.connect(db, read_only=True) as con:  # opens, upgrading now if the kill came first
                assert con.execute("SELECT bool_and(doubled = 2 * na) FROM attributions").fetchone()[0]
                assert con.execute("SELECT count(*) FROM attribution_sums").fetchone()[0] == len(QUERIES)
            assert stored_rows(db, run_id) == expected
            for table, frame in derived(db, run_id).items():
                pd.testing.assert_frame_equal(frame, reference[table])
        assert sorted(p.name for p in db.parent.iterdir()) == ["qrn.duckdb"]  # no temporary copy left behind

    kills["migration"] = kill_repeatedly(ref, db, upgrade, after_migration_kill, rng)
    with capsys.disabled():
        print(f"\nkills survived: {kills} = {sum(kills.values())}")
    assert kills == dict.fromkeys(["write_query", "finalize_run", "merge", "migration"], KILLS)


EVALUATE_KILLS = 20
"""Kills of `evaluate_run` while it writes its numbers (issue 29)."""


def evaluated(db: Path, run_id: str) -> pd.DataFrame:
    """The run's stored evaluations, sorted."""
    with store.connect(db, read_only=True) as con:
        return store.evaluations(con, run_id).sort_values(["method", "evaluation", "group_name", "metric"])


def timed_fork(work: Callable[[int], None]) -> tuple[float, float]:
    """Fork work(fd) and let it finish: (seconds until it first wrote to fd, seconds until it exited)."""
    read, write = os.pipe()
    start = time.perf_counter()
    pid = fork(work, write)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        f.read(1)
        marked = time.perf_counter() - start
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the evaluation failed by itself"
    return marked, time.perf_counter() - start


@pytest.mark.slow
def test_evaluation_killed_while_storing_is_stored_whole_or_not_at_all(tmp_path, tiny, monkeypatch, capsys):
    from qrcore.evaluation import evaluate
    from seeded_store import seed_store

    lm = tiny("llama")
    base = tmp_path / "base" / "qrn.duckdb"
    base.parent.mkdir()
    run_id = seed_store(base, lm)
    with duckdb.connect(str(base)) as con:
        con.execute("DELETE FROM evaluations")
    with monkeypatch.context() as m:  # every query computed and checkpointed, nothing stored
        m.setattr(store, "replace_evaluations", lambda *a: (_ for _ in ()).throw(RuntimeError("not now")))
        with pytest.raises(RuntimeError):
            evaluate.evaluate_run(lm, run_id, str(base))
    checkpoint = next(base.parent.glob(".qrn.duckdb.evaluating-*.npz"))
    reference = tmp_path / "ref" / "qrn.duckdb"
    reference.parent.mkdir()
    shutil.copy(base, reference)
    shutil.copy(checkpoint, reference.parent / checkpoint.name)
    evaluate.evaluate_run(lm, run_id, str(reference))
    whole = evaluated(reference, run_id)
    assert len(whole) > 100
    db = tmp_path / "work" / "qrn.duckdb"
    db.parent.mkdir()

    def fresh() -> None:
        for p in db.parent.iterdir():
            p.unlink()
        shutil.copy(base, db)
        shutil.copy(checkpoint, db.parent / checkpoint.name)

    def work(fd: int) -> None:
        """The evaluation of the checkpointed run (one thread: torch's pool does not survive a fork); it writes a
        byte to fd as it starts storing."""
        import torch

        torch.set_num_threads(1)
        real = store.replace_evaluations
        store.replace_evaluations = lambda *a: os.write(fd, b"w") and real(*a)
        evaluate.evaluate_run(lm, run_id, str(db))

    fresh()
    writing, done = timed_fork(work)
    rng = random.Random(29)
    outcomes = {"whole": 0, "none": 0}
    for _ in range(5 * EVALUATE_KILLS):
        fresh()
        killed, _ = kill_during(work, rng.uniform(0.0, done - writing), after_mark=True)
        if not killed:
            continue
        stored = evaluated(db, run_id)
        if stored.empty:
            outcomes["none"] += 1
        else:  # the whole evaluation, never a part of it
            pd.testing.assert_frame_equal(stored.reset_index(drop=True), whole.reset_index(drop=True))
            outcomes["whole"] += 1
        evaluate.evaluate_run(lm, run_id, str(db))  # the rerun stores the same numbers
        pd.testing.assert_frame_equal(
            evaluated(db, run_id).reset_index(drop=True), whole.reset_index(drop=True), rtol=1e-5
        )
        if sum(outcomes.values()) == EVALUATE_KILLS:
            break
    with capsys.disabled():
        print(f"\nevaluate kills while storing: {outcomes}")
    assert sum(outcomes.values()) == EVALUATE_KILLS
