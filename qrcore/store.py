"""The DuckDB store: models, datasets, runs, per-query sparse attributions and the run-level QRNCA results.

Concurrency (measured with duckdb 2.0.0, two processes, see tests/test_store.py):
- A process with a read-write connection open holds an exclusive file lock: another process can open the
  file neither read-write nor read-only ("IO Error: Could not set lock on file ... Conflicting lock is held
  in ... (PID n)").
- Read-only connections share the file with each other but block a read-write open in another process.
- Opening and closing a read-write connection without writing leaves the file's bytes and mtime unchanged;
  opening a file that is not DuckDB fails without touching it.
So nobody may keep the file open: `qrn run` connects for each short transaction (`write_query` per query,
`finalize_run` once) and closes, the explorer connects read-only per page render and closes, and `connect`
retries for up to `wait` seconds while another process holds the file. Two writers are kept apart for a
whole run by `writer_lock`, an flock on "<db>.lock" (left in place after the run; a lock file that nobody
holds is free).

Damage (measured the same way): a DuckDB file cut short can still open and even take writes, failing only when
a lost block is read, and a healthy file may end before the block count in its header (DuckDB cuts free blocks off
its end). So `connect` reads every table's storage metadata and the catalog's before anything is written, and
compares the file's size with the last block they use (once per version of the file and process); a damaged file
is refused for reading and writing alike and never written (a refused read-write connection is closed without
DuckDB's checkpoint). A new store and every migration are built in a temporary copy and moved into place only when
complete, so a killed upgrade leaves the old file as it was.

All SQL is in module constants; values are bound with `?` or come from a registered DataFrame.
Readers take a run's id or its name and need the run-level results of `finalize_run`.
Tables have no foreign keys (DuckDB's make deletes order-dependent); every writer keeps them consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
import fcntl
import hashlib
import json
import os
from pathlib import Path
import re
import shutil
import time

import duckdb
import numpy as np
import pandas as pd

from qrcore import __version__
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.outputs import make_folder
from qrcore.processes import alive
from qrcore.selection import analysis, card, consistency, live, qrnca
from qrcore.settings import QRNCASettings, RunSettings

SCHEMA_VERSION = 2
CODE_VERSION = f"{__version__}+schema{SCHEMA_VERSION}"
"""Part of every run id: results computed by another code or schema version are never mixed in."""
APP = "qr-neuron-explorer"
"""meta 'app' value that marks a file as ours."""
DEFAULT_DB = "cache/qrn.duckdb"
DB_ENV = "QRN_DB"
TOP_ACTIVATIONS = 50
"""Highest activations kept per query for the activation baseline."""
LOCK_WAIT_S = 15.0
"""How long `connect` retries while another process has the file open (a run's finalize takes a few seconds)."""
FRAME = "_frame"
"""Name under which a DataFrame is registered for one bulk INSERT."""
DUCKDB_MAGIC = b"DUCK"
"""Bytes 8-11 of every DuckDB file."""
DUCKDB_HEADERS = 3 * 4096
"""A DuckDB file starts with a main header and two database headers; block b lies at DUCKDB_HEADERS + b * size."""
TEMP_INFIX = ".building-"
"""A store is built or upgraded in "<db dir>/.<db name>.building-<pid>" and then moved into place."""
_SOUND: set[tuple[int, int, int, int]] = set()
"""(device, inode, size, mtime) of the store files `_check_blocks` passed in this process: not read again."""

# meta(key, value): 'app' = APP and 'schema_version'; a file without it is not ours.
CREATE_META = "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)"
SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
SELECT_META = "SELECT key, value FROM meta"
LIST_TABLES = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_catalog = current_database() AND table_schema = 'main'"
)
BASE_TABLES = "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main'"
LAST_TABLE_BLOCK = """SELECT coalesce(max(greatest(block_id, coalesce(list_max(additional_block_ids), -1))), -1)
    FROM pragma_storage_info(?) WHERE persistent"""
"""The last file block a table's stored segments use (reads the table's storage metadata)."""
LAST_CATALOG_BLOCK = "SELECT coalesce(max(block_id), -1) FROM pragma_metadata_info()"
BLOCK_SIZE = "SELECT block_size FROM pragma_database_size() WHERE database_name = current_database()"
CHECKPOINT = "CHECKPOINT"
NO_CHECKPOINT_ON_CLOSE = "PRAGMA disable_checkpoint_on_shutdown"

SCHEMA_V1 = [
    # models: one row per model fingerprint (config + weights), with the MLP shape the neuron maps use.
    """CREATE TABLE models (model_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, architecture VARCHAR NOT NULL,
        n_layers INTEGER NOT NULL, n_neurons INTEGER NOT NULL, config_json VARCHAR NOT NULL,
        created TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
    # datasets: dataset_id hashes the name and the queries' content; a name stands for one content.
    """CREATE TABLE datasets (dataset_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, source VARCHAR NOT NULL,
        created TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
    # queries: the dataset's queries in their original order (position); meta_json keeps Query.meta.
    """CREATE TABLE queries (dataset_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL, position INTEGER NOT NULL,
        group_name VARCHAR NOT NULL, question VARCHAR NOT NULL, answer VARCHAR NOT NULL,
        distractors_json VARCHAR NOT NULL, relation VARCHAR NOT NULL, prompts_json VARCHAR NOT NULL,
        labels_json VARCHAR NOT NULL, meta_json VARCHAR NOT NULL, PRIMARY KEY (dataset_id, query_id))""",
    # runs: run_id hashes model, dataset, settings and code version; n_clusters = |C| at finalize.
    """CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, model_id VARCHAR NOT NULL,
        dataset_id VARCHAR NOT NULL, settings_json VARCHAR NOT NULL, code_version VARCHAR NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'finished')), n_clusters INTEGER,
        created TIMESTAMP NOT NULL DEFAULT current_timestamp, finished TIMESTAMP)""",
    # query_results: a row means the query is done (written with its attributions in one transaction).
    """CREATE TABLE query_results (run_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL, correct_prob DOUBLE NOT NULL,
        accuracy DOUBLE NOT NULL, seconds DOUBLE NOT NULL, PRIMARY KEY (run_id, query_id))""",
    # attributions: sparse NA per query, its coarse cluster plus the neurons above the storage floor (qrnca.sparsify).
    """CREATE TABLE attributions (run_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL, layer SMALLINT NOT NULL,
        neuron INTEGER NOT NULL, na REAL NOT NULL, in_cluster BOOLEAN NOT NULL)""",
    # top_activations: the TOP_ACTIVATIONS highest activations per query, for the activation baseline.
    """CREATE TABLE top_activations (run_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL, layer SMALLINT NOT NULL,
        neuron INTEGER NOT NULL, activation REAL NOT NULL)""",
    # neuron_stats: per stored neuron of a finished run, cluster count, ICA (Eq. 6) and the common flag.
    """CREATE TABLE neuron_stats (run_id VARCHAR NOT NULL, layer SMALLINT NOT NULL, neuron INTEGER NOT NULL,
        n_clusters INTEGER NOT NULL, ica DOUBLE NOT NULL, is_common BOOLEAN NOT NULL)""",
    # qr_neurons: the selected neurons of every query by every method of qrnca.METHODS.
    """CREATE TABLE qr_neurons (run_id VARCHAR NOT NULL, method VARCHAR NOT NULL, query_id VARCHAR NOT NULL,
        rank SMALLINT NOT NULL, layer SMALLINT NOT NULL, neuron INTEGER NOT NULL, score DOUBLE)""",
    # heatmaps: NAICA summed per group, layer and neuron (Fig. 5), non-zero cells only.
    """CREATE TABLE heatmaps (run_id VARCHAR NOT NULL, group_name VARCHAR NOT NULL, layer SMALLINT NOT NULL,
        neuron INTEGER NOT NULL, score DOUBLE NOT NULL)""",
    # evaluations: long table of measured numbers (PCR, flip rates, prediction accuracy) per method and group.
    """CREATE TABLE evaluations (run_id VARCHAR NOT NULL, method VARCHAR NOT NULL, evaluation VARCHAR NOT NULL,
        group_name VARCHAR NOT NULL, metric VARCHAR NOT NULL, value DOUBLE)""",
]

SCHEMA_V2 = [
    # attributions.ig: the templates' raw IG scores of the row's neuron (NULL in runs stored before version 2).
    "ALTER TABLE attributions ADD COLUMN ig FLOAT[]",
]

MIGRATIONS: dict[int, list[str]] = {0: SCHEMA_V1, 1: SCHEMA_V2}
"""Statements that take a store from version k to k + 1; version 0 is a new or empty store."""

INSERT_MODEL = "INSERT OR IGNORE INTO models (model_id, name, architecture, n_layers, n_neurons, config_json) VALUES (?, ?, ?, ?, ?, ?)"
DATASET_BY_NAME = "SELECT dataset_id, (SELECT count(*) FROM queries q WHERE q.dataset_id = d.dataset_id) FROM datasets d WHERE name = ?"
INSERT_DATASET = "INSERT INTO datasets (dataset_id, name, source) VALUES (?, ?, ?)"
INSERT_QUERIES = f"""INSERT INTO queries SELECT ?, query_id, position, group_name, question, answer, distractors_json,
    relation, prompts_json, labels_json, meta_json FROM {FRAME}"""
FIND_DATASET = "SELECT dataset_id FROM datasets WHERE dataset_id = ? OR name = ?"
SELECT_QUERIES = """SELECT query_id, group_name, question, answer, distractors_json, relation, prompts_json,
    labels_json, meta_json FROM queries WHERE dataset_id = ? ORDER BY position"""
FIND_MODEL = "SELECT 1 FROM models WHERE model_id = ?"
RUN_BY_NAME = "SELECT run_id, model_id, dataset_id, settings_json, code_version FROM runs WHERE name = ?"
RUN_DATASET = "SELECT dataset_id FROM runs WHERE run_id = ?"
EXPORT_TABLES = (
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
)
_IN_RUNS = "(SELECT unnest(?::VARCHAR[]))"
EXPORT_SELECT = {
    "models": f"SELECT * FROM models WHERE model_id IN (SELECT model_id FROM runs WHERE run_id IN {_IN_RUNS})",
    "datasets": f"SELECT * FROM datasets WHERE dataset_id IN (SELECT dataset_id FROM runs WHERE run_id IN {_IN_RUNS})",
    "queries": f"SELECT * FROM queries WHERE dataset_id IN (SELECT dataset_id FROM runs WHERE run_id IN {_IN_RUNS})",
    **{t: f"SELECT * FROM {t} WHERE run_id IN {_IN_RUNS}" for t in EXPORT_TABLES[3:]},
}
IMPORT_TABLE = {t: f"INSERT OR IGNORE INTO {t} BY NAME SELECT * FROM read_parquet(?)" for t in EXPORT_TABLES[:4]} | {
    t: f"INSERT INTO {t} BY NAME SELECT * FROM read_parquet(?)" for t in EXPORT_TABLES[4:]
}
"""By column name, so exports of older schema versions (fewer columns) load too."""
COUNT_RUNS = f"SELECT count(*) FROM runs WHERE run_id IN {_IN_RUNS}"
RUN_NAME_BY_ID = "SELECT name FROM runs WHERE run_id = ?"
INSERT_RUN = "INSERT INTO runs (run_id, name, model_id, dataset_id, settings_json, code_version, status) VALUES (?, ?, ?, ?, ?, ?, 'running')"
RUN_INFO = """SELECT u.run_id, u.name, u.settings_json, u.status, u.n_clusters, m.n_layers, m.n_neurons,
        u.model_id, m.name FROM runs u JOIN models m ON m.model_id = u.model_id WHERE u.run_id = ? OR u.name = ?"""
RUN_PROGRESS = """SELECT (SELECT count(*) FROM query_results r WHERE r.run_id = u.run_id),
        (SELECT count(*) FROM queries q WHERE q.dataset_id = u.dataset_id) FROM runs u WHERE u.run_id = ?"""
ALL_RUN_NAMES = "SELECT name FROM runs ORDER BY name"
DONE_QUERIES = "SELECT query_id FROM query_results WHERE run_id = ?"
DELETE_QUERY_ROWS = [
    f"DELETE FROM {table} WHERE run_id = ? AND query_id IN (SELECT query_id FROM {FRAME})"
    for table in ("query_results", "attributions", "top_activations")
]
INSERT_ATTRIBUTIONS = f"INSERT INTO attributions SELECT ?, query_id, layer, neuron, na, in_cluster, ig FROM {FRAME}"
INSERT_TOP = f"INSERT INTO top_activations SELECT ?, query_id, layer, neuron, activation FROM {FRAME}"
INSERT_RESULTS = f"INSERT INTO query_results SELECT ?, query_id, correct_prob, accuracy, seconds FROM {FRAME}"
MARK_RUNNING = "UPDATE runs SET status = 'running', finished = NULL WHERE run_id = ? AND status <> 'running'"
RUN_GROUPS = """SELECT r.query_id, q.group_name FROM query_results r JOIN runs u ON u.run_id = r.run_id
    JOIN queries q ON q.dataset_id = u.dataset_id AND q.query_id = r.query_id WHERE r.run_id = ?"""
SELECT_ATTRIBUTIONS = "SELECT query_id, layer, neuron, na, in_cluster FROM attributions WHERE run_id = ?"
SELECT_TOP = "SELECT query_id, layer, neuron, activation FROM top_activations WHERE run_id = ?"
DELETE_DERIVED = [f"DELETE FROM {table} WHERE run_id = ?" for table in ("neuron_stats", "qr_neurons", "heatmaps")]
INSERT_STATS = f"INSERT INTO neuron_stats SELECT ?, layer, neuron, n_clusters, ica, is_common FROM {FRAME}"
INSERT_QR = f"INSERT INTO qr_neurons SELECT ?, method, query_id, rank, layer, neuron, score FROM {FRAME}"
INSERT_HEATMAPS = f"INSERT INTO heatmaps SELECT ?, group_name, layer, neuron, score FROM {FRAME}"
MARK_FINISHED = "UPDATE runs SET status = 'finished', finished = current_timestamp, n_clusters = ? WHERE run_id = ?"
DELETE_EVALUATION = "DELETE FROM evaluations WHERE run_id = ? AND method = ? AND evaluation = ?"
INSERT_EVALUATION = f"INSERT INTO evaluations SELECT ?, ?, ?, group_name, metric, value FROM {FRAME}"
LIST_RUNS = """SELECT u.run_id, u.name, m.name AS model, d.name AS dataset, u.status,
        (SELECT count(*) FROM query_results r WHERE r.run_id = u.run_id) AS n_done,
        (SELECT count(*) FROM queries q WHERE q.dataset_id = u.dataset_id) AS n_queries,
        u.created, u.finished, u.code_version, u.settings_json
    FROM runs u JOIN models m ON m.model_id = u.model_id JOIN datasets d ON d.dataset_id = u.dataset_id
    ORDER BY u.created, u.name"""
SELECT_HEATMAP = "SELECT layer, neuron, score FROM heatmaps WHERE run_id = ? AND group_name = ?"
HEATMAP_GROUPS = "SELECT DISTINCT group_name FROM heatmaps WHERE run_id = ? ORDER BY group_name"
SELECT_QR = "SELECT query_id, rank, layer, neuron, score FROM qr_neurons WHERE run_id = ? AND method = ? ORDER BY query_id, rank"
SELECT_QR_QUERY = "SELECT query_id, rank, layer, neuron, score FROM qr_neurons WHERE run_id = ? AND method = ? AND query_id = ? ORDER BY rank"
SELECT_COMMON = "SELECT layer, neuron, n_clusters FROM neuron_stats WHERE run_id = ? AND is_common"
QUERY_ATTRIBUTIONS = (
    "SELECT query_id, layer, neuron, na, in_cluster, ig FROM attributions WHERE run_id = ? AND query_id = ?"
)
QUERY_STATS = """SELECT s.layer, s.neuron, s.n_clusters, s.ica, s.is_common FROM neuron_stats s
    JOIN attributions a ON a.run_id = s.run_id AND a.layer = s.layer AND a.neuron = s.neuron
    WHERE a.run_id = ? AND a.query_id = ?"""
GROUP_ACCURACY = """SELECT q.group_name, count(*) AS queries, avg(r.accuracy) AS accuracy, avg(r.correct_prob) AS correct_prob
    FROM query_results r JOIN runs u ON u.run_id = r.run_id
    JOIN queries q ON q.dataset_id = u.dataset_id AND q.query_id = r.query_id
    WHERE r.run_id = ? GROUP BY q.group_name ORDER BY q.group_name"""
SELECT_EVALUATIONS = """SELECT method, evaluation, group_name, metric, value FROM evaluations WHERE run_id = ?
    ORDER BY evaluation, method, group_name, metric"""
# Readers of the explorer's neuron cards, live thresholds, template consistency and exports.
STORED_ROWS = "SELECT query_id, layer, neuron, na, in_cluster, ig FROM attributions WHERE run_id = ? ORDER BY query_id"
COUNT_NO_IG = "SELECT count(*) FILTER (WHERE ig IS NULL), count(*) FROM attributions WHERE run_id = ?"
RUN_COUNTS = "SELECT layer, neuron, n_clusters FROM neuron_stats WHERE run_id = ?"
RUN_MODEL = "SELECT m.model_id, m.name FROM runs u JOIN models m ON m.model_id = u.model_id WHERE u.run_id = ?"
NEURON_ROWS = "SELECT query_id, na, in_cluster FROM attributions WHERE run_id = ? AND layer = ? AND neuron = ?"
NEURON_QR = (
    """SELECT query_id, rank FROM qr_neurons WHERE run_id = ? AND method = 'qrnca' AND layer = ? AND neuron = ?"""
)
NEURON_TOP = "SELECT query_id, activation FROM top_activations WHERE run_id = ? AND layer = ? AND neuron = ?"


@dataclass(frozen=True)
class RunInfo:
    """What readers need to know about one run."""

    run_id: str
    name: str
    settings: RunSettings
    status: str
    """'running' or 'finished'."""
    n_clusters: int | None
    """|C|, the number of queries when the run was finalized; None before."""
    n_layers: int
    n_neurons: int
    model_id: str
    """Fingerprint of the model that computed the run (config and weights, `qrcore.model.load`)."""
    model_name: str
    """The name the model was loaded under (--model)."""


def default_db() -> str:
    """The store path: $QRN_DB if set, else DEFAULT_DB."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


def connect(
    path: str | os.PathLike | None = None, read_only: bool = False, *, wait: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """Open the store at `path` (default `default_db()`), creating or upgrading it; refuse foreign, newer or damaged
    files untouched.

    Close the connection soon (use it in a `with` block): an open connection locks the file for other processes.
    """
    path = Path(path if path is not None else default_db())
    if not path.exists():
        if read_only:
            raise QRNError(f"{path} does not exist; compute a run first (qrn run) or pass another --db")
        path.parent.mkdir(parents=True, exist_ok=True)
        _create(path)
    con = _open(path, read_only, wait)
    try:
        version = _check_tables(con, path)
        if not read_only:
            _remove_stale_temps(path)
        if version == SCHEMA_VERSION:
            return con
        if not read_only:
            _migrate(con, path, version)
    except BaseException:
        _close_unwritten(con)
        raise
    con.close()
    if read_only:
        connect(path, wait=wait).close()  # upgrade with a short read-write connection
    return connect(path, read_only, wait=wait)


def verify(path: str | os.PathLike | None = None) -> None:
    """Refuse with a QRNError, writing nothing, a store that exists but is foreign, newer or damaged (an older one is
    upgraded)."""
    if Path(path if path is not None else default_db()).exists():
        connect(path, read_only=True).close()


@contextmanager
def writer_lock(path: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold "<db>.lock" for a whole run so that a second `qrn run` on the same store stops with a clear message."""
    db = Path(path if path is not None else default_db())
    verify(db)  # a refused store gets no lock file beside it
    lock = Path(f"{db}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise QRNError(
                f"{db} is being written by another qrn run (pid {holder}); wait for it to finish or use another --db"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def upsert_model(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    name: str,
    architecture: str,
    n_layers: int,
    n_neurons: int,
    config_json: str,
) -> str:
    """Record a model under its fingerprint `model_id` (config + weights) once; later calls are no-ops."""
    con.execute(INSERT_MODEL, [model_id, name, architecture, n_layers, n_neurons, config_json])
    return model_id


def upsert_dataset(con: duckdb.DuckDBPyConnection, name: str, source: str, queries: Sequence[Query]) -> str:
    """Store a dataset's queries under `name` and return its id; the same content again is a no-op.

    A name already used for other content raises QRNError, so a run's dataset never changes under it.
    """
    records = [_query_record(q) for q in queries]
    dataset_id = _digest(name, json.dumps(records, sort_keys=True, ensure_ascii=False))
    stored = con.execute(DATASET_BY_NAME, [name]).fetchone()
    if stored is not None:
        if stored[0] == dataset_id:
            return dataset_id
        raise QRNError(
            f"dataset {name!r} is already stored with other queries ({stored[1]} stored, {len(records)} "
            f"given); import the new queries under another name, e.g. {name + '-2'!r}"
        )
    ids = pd.Series([r["id"] for r in records])
    if ids.duplicated().any():
        raise QRNError(
            f"dataset {name!r}: query id {ids[ids.duplicated()].iloc[0]!r} appears twice; give every query its own id"
        )
    frame = pd.DataFrame(
        {
            "query_id": ids,
            "position": np.arange(len(records)),
            "group_name": [r["group"] for r in records],
            "question": [r["question"] for r in records],
            "answer": [r["answer"] for r in records],
            "distractors_json": [json.dumps(r["distractors"], ensure_ascii=False) for r in records],
            "relation": [r["relation"] for r in records],
            "prompts_json": [json.dumps(r["prompts"], ensure_ascii=False) for r in records],
            "labels_json": [json.dumps(r["labels"], ensure_ascii=False) for r in records],
            "meta_json": [json.dumps(q.meta, ensure_ascii=False, sort_keys=True) for q in queries],
        }
    )
    with _transaction(con):
        con.execute(INSERT_DATASET, [dataset_id, name, source])
        _execute_with(con, INSERT_QUERIES, frame, dataset_id)
    return dataset_id


def load_queries(con: duckdb.DuckDBPyConnection, dataset: str) -> list[Query]:
    """The queries of a dataset given by id or name, in their original order."""
    found = con.execute(FIND_DATASET, [dataset, dataset]).fetchone()
    if found is None:
        raise QRNError(f"no dataset {dataset!r} in this store; import it first")
    rows = con.execute(SELECT_QUERIES, [found[0]]).fetchall()
    return [
        Query(
            id=qid,
            group=group,
            question=question,
            answer=answer,
            distractors=tuple(json.loads(d)),
            relation=relation,
            prompts=tuple(json.loads(p)),
            labels=tuple(json.loads(lab)),
            meta=json.loads(m),
        )
        for qid, group, question, answer, d, relation, p, lab, m in rows
    ]


def get_or_create_run(
    con: duckdb.DuckDBPyConnection,
    name: str,
    model_id: str,
    dataset_id: str,
    settings: RunSettings,
    code_version: str = CODE_VERSION,
) -> str:
    """The id of run `name`, created if new; the same name with another model, dataset, settings or code raises QRNError."""
    settings_json = settings.to_json()
    run_id = _digest(model_id, dataset_id, settings_json, code_version)
    stored = con.execute(RUN_BY_NAME, [name]).fetchone()
    if stored is not None:
        if stored[0] == run_id:
            return run_id
        diff = _run_diff(stored[1:], (model_id, dataset_id, settings_json, code_version))
        raise QRNError(
            f"run {name!r} already exists and differs in {diff}; choose another run name to compute a new run"
        )
    twin = con.execute(RUN_NAME_BY_ID, [run_id]).fetchone()
    if twin is not None:
        raise QRNError(
            f"run {twin[0]!r} already has this model, dataset, settings and code version; "
            f"use the name {twin[0]!r} to resume or view it"
        )
    if (
        con.execute(FIND_MODEL, [model_id]).fetchone() is None
        or con.execute(FIND_DATASET, [dataset_id, dataset_id]).fetchone() is None
    ):
        raise ValueError(f"store the model {model_id!r} and dataset {dataset_id!r} before creating a run on them")
    con.execute(INSERT_RUN, [run_id, name, model_id, dataset_id, settings_json, code_version])
    return run_id


def done_query_ids(con: duckdb.DuckDBPyConnection, run_id: str) -> set[str]:
    """Ids of the run's queries whose results are stored (a resumed run skips them)."""
    return {row[0] for row in con.execute(DONE_QUERIES, [run_id]).fetchall()}


def write_query(con: duckdb.DuckDBPyConnection, run_id: str, attr: QueryAttribution, settings: QRNCASettings) -> None:
    """Store one query's result, sparse attributions (`qrnca.sparsify` with the run's settings) and top activations."""
    results = pd.DataFrame(
        {
            "query_id": [attr.query_id],
            "correct_prob": [attr.correct_prob],
            "accuracy": [attr.accuracy],
            "seconds": [attr.seconds],
        }
    )
    write_rows(con, run_id, results, qrnca.sparsify(attr, settings), top_activations(attr))


def top_activations(attr: QueryAttribution, k: int = TOP_ACTIVATIONS) -> pd.DataFrame:
    """The k highest activations of a query at the answer position, as (query_id, layer, neuron, activation) rows."""
    flat = attr.activation.ravel()  # (layers * neurons,)
    k = min(k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]  # (k,) flat indices, unordered
    return pd.DataFrame(
        {
            "query_id": attr.query_id,
            "layer": (top // attr.activation.shape[1]).astype(np.int16),
            "neuron": (top % attr.activation.shape[1]).astype(np.int32),
            "activation": flat[top].astype(np.float32),
        }
    )


def write_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, results: pd.DataFrame, sparse: pd.DataFrame, top: pd.DataFrame
) -> None:
    """Replace the rows of the queries in `results` in one transaction: all of them are stored, or none.

    `results` (query_id, correct_prob, accuracy, seconds), `sparse` (`qrnca.sparsify` rows) and `top`
    (`top_activations` rows) may hold many queries, for bulk loads.
    """
    with _transaction(con):
        for sql in DELETE_QUERY_ROWS:
            _execute_with(con, sql, results[["query_id"]], run_id)
        _execute_with(con, INSERT_ATTRIBUTIONS, sparse, run_id)
        _execute_with(con, INSERT_TOP, top, run_id)
        _execute_with(con, INSERT_RESULTS, results, run_id)
        con.execute(MARK_RUNNING, [run_id])


def finalize_run(con: duckdb.DuckDBPyConnection, run_id: str, seed: int = 0) -> None:
    """Compute the run's neuron stats, QR neurons of every method and group heatmaps, and mark it finished.

    |C| is the number of done queries. The numbers are computed first (seconds for 10,000 queries), then
    written in one transaction that replaces earlier ones. `seed` seeds the random baseline.
    """
    info = run_info(con, run_id)
    s = info.settings.qrnca
    groups = dict(con.execute(RUN_GROUPS, [info.run_id]).fetchall())
    sparse = con.execute(SELECT_ATTRIBUTIONS, [info.run_id]).df()
    top = con.execute(SELECT_TOP, [info.run_id]).df()
    stats = qrnca.neuron_stats(sparse, len(groups), s.u)
    heat = analysis.heatmap_sums(qrnca.naica(sparse, stats), groups)
    qr = pd.concat(
        [
            qrnca.qr_neurons(
                sparse, groups, s, method, activations=top, shape=(info.n_layers, info.n_neurons), seed=seed
            ).assign(method=method)
            for method in qrnca.METHODS
        ],
        ignore_index=True,
    )
    with _transaction(con):
        for sql in DELETE_DERIVED:
            con.execute(sql, [info.run_id])
        _execute_with(con, INSERT_STATS, stats, info.run_id)
        _execute_with(con, INSERT_QR, qr, info.run_id)
        _execute_with(con, INSERT_HEATMAPS, heat, info.run_id)
        con.execute(MARK_FINISHED, [len(groups), info.run_id])


def write_evaluations(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str, evaluation: str, rows: pd.DataFrame
) -> None:
    """Replace one evaluation's numbers (rows: group_name, metric, value), e.g. evaluation 'suppress', metric 'pcr'."""
    with _transaction(con):
        con.execute(DELETE_EVALUATION, [run_id, method, evaluation])
        _execute_with(con, INSERT_EVALUATION, rows[["group_name", "metric", "value"]], run_id, method, evaluation)


def run_info(con: duckdb.DuckDBPyConnection, run: str) -> RunInfo:
    """The run with this id or name; QRNError listing the stored runs if there is none."""
    row = con.execute(RUN_INFO, [run, run]).fetchone()
    if row is None:
        names = [r[0] for r in con.execute(ALL_RUN_NAMES).fetchall()]
        raise QRNError(
            f"no run {run!r} in this store; "
            + (f"stored runs: {', '.join(names)}" if names else "compute one first (qrn run)")
        )
    run_id, name, settings_json, status, n_clusters, n_layers, n_neurons, model_id, model_name = row
    return RunInfo(
        run_id,
        name,
        RunSettings.from_json(settings_json),
        status,
        n_clusters,
        n_layers,
        n_neurons,
        model_id,
        model_name,
    )


def finished_run(con: duckdb.DuckDBPyConnection, run: str) -> RunInfo:
    """`run_info` of a run whose every query is stored and finalized; QRNError naming its progress otherwise."""
    info = run_info(con, run)
    if info.status != "finished":
        done, total = con.execute(RUN_PROGRESS, [info.run_id]).fetchone()
        raise QRNError(
            f"run {info.name!r} is unfinished ({done} of {total} queries done); "
            "finish it first: the same qrn run again resumes it"
        )
    return info


def require_model(info: RunInfo, name: str, fingerprint: str) -> None:
    """QRNError naming both models unless `fingerprint` is that of the model that computed the run."""
    if fingerprint != info.model_id:
        raise QRNError(
            f"run {info.name!r} was computed with model {info.model_name} ({info.model_id}), not with "
            f"{name} ({fingerprint}); use the run's model (qrn --model, or QRN_MODEL for the explorer)"
        )


def run_dataset_id(con: duckdb.DuckDBPyConnection, run_id: str) -> str:
    """The dataset id of a run."""
    return con.execute(RUN_DATASET, [run_id]).fetchone()[0]


def export_runs(con: duckdb.DuckDBPyConnection, runs: Sequence[str], folder: str | os.PathLike) -> dict[str, int]:
    """Write every row of the given runs (and their models, datasets and queries) as one Parquet file per table."""
    ids = [finished_run(con, r).run_id for r in runs]
    out = make_folder(folder)
    counts = {}
    for table, sql in EXPORT_SELECT.items():
        frame = con.execute(sql, [ids]).df()
        frame.to_parquet(out / f"{table}.parquet", compression="zstd", index=False)
        counts[table] = len(frame)
    return counts


def has_runs(con: duckdb.DuckDBPyConnection, folder: str | os.PathLike) -> bool:
    """Whether every run of an `export_runs` folder is in the store."""
    ids = pd.read_parquet(Path(folder) / "runs.parquet", columns=["run_id"])["run_id"].tolist()
    return con.execute(COUNT_RUNS, [ids]).fetchone()[0] == len(ids)


def import_runs(
    con: duckdb.DuckDBPyConnection, folder: str | os.PathLike, progress: Callable[[int, int, str], None] | None = None
) -> bool:
    """Load an `export_runs` folder in one transaction, unless its runs are already stored; True if loaded.

    `progress(done, total, table)` follows each table, in bytes of Parquet read (the attributions dominate).
    """
    folder = Path(folder)
    if has_runs(con, folder):
        return False
    files = {table: folder / f"{table}.parquet" for table in IMPORT_TABLE}
    total, done = sum(f.stat().st_size for f in files.values()), 0
    with _transaction(con):
        for table, sql in IMPORT_TABLE.items():
            con.execute(sql, [str(files[table])])
            done += files[table].stat().st_size
            if progress:
                progress(done, total, table)
    return True


def list_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """All runs with model, dataset, status and progress (n_done of n_queries), oldest first."""
    return con.execute(LIST_RUNS).df()


def heatmap(con: duckdb.DuckDBPyConnection, run_id: str, group: str) -> np.ndarray:
    """Fig. 5: the (layers, neurons) float32 map of NAICA summed over the group's queries."""
    info = _finished(con, run_id)
    rows = con.execute(SELECT_HEATMAP, [info.run_id, group]).df()
    if rows.empty and group not in heatmap_groups(con, info.run_id):
        raise QRNError(
            f"run {info.name!r} has no group {group!r}; groups: {', '.join(heatmap_groups(con, info.run_id))}"
        )
    return analysis.to_dense(rows, info.n_layers, info.n_neurons)


def heatmap_groups(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """The groups that have a heatmap in a finished run, sorted."""
    return [row[0] for row in con.execute(HEATMAP_GROUPS, [_finished(con, run_id).run_id]).fetchall()]


def overlap(con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca") -> pd.DataFrame:
    """Fig. 2a: group x group Jaccard overlap of the groups' QR neurons (`analysis.overlap_matrix`)."""
    info = _finished(con, run_id)
    return analysis.overlap_matrix(qr_neurons(con, info.run_id, method), run_groups(con, info.run_id))


def layer_distribution(con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca") -> pd.DataFrame:
    """Fig. 2b: per group, the share of its QR neurons in each layer (`analysis.layer_distribution`)."""
    info = _finished(con, run_id)
    return analysis.layer_distribution(
        qr_neurons(con, info.run_id, method), run_groups(con, info.run_id), info.n_layers
    )


def localisation(con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca") -> dict[str, float]:
    """How concentrated the run's QR neurons are (`analysis.localisation`)."""
    info = _finished(con, run_id)
    return analysis.localisation(
        qr_neurons(con, info.run_id, method), run_groups(con, info.run_id), info.n_layers, info.n_neurons
    )


def common_neurons(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Sec. 4.4: the run's common neurons (layer, neuron, n_clusters, frequency), most frequent first."""
    info = _finished(con, run_id)
    rows = con.execute(SELECT_COMMON, [info.run_id]).df()
    return qrnca.common_neurons(rows, info.n_clusters, info.settings.qrnca.u)


def query_neurons(con: duckdb.DuckDBPyConnection, run_id: str, query_id: str) -> pd.DataFrame:
    """Every stored neuron of one query with NA, cluster count, ICA, common flag, NAICA, and why it is (not) a QR neuron.

    Columns of `qrnca.explain`, sorted by NAICA (highest first); `kept` rows are the query's QRNCA neurons.
    """
    info = _finished(con, run_id)
    sparse = con.execute(QUERY_ATTRIBUTIONS, [info.run_id, query_id]).df()
    if sparse.empty:
        raise QRNError(f"run {info.name!r} has no stored neurons for query {query_id!r}; pick a query of its dataset")
    stats = con.execute(QUERY_STATS, [info.run_id, query_id]).df()
    if len(stats) < len(sparse):
        raise QRNError(f"query {query_id!r} was computed after run {info.name!r} was finalized; finalize it again")
    rows = qrnca.explain(qrnca.naica(sparse, stats), info.settings.qrnca.v)
    return rows.drop(columns="query_id").sort_values(
        ["naica", "layer", "neuron"], ascending=[False, True, True], ignore_index=True
    )


def qr_neurons(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca", query_id: str | None = None
) -> pd.DataFrame:
    """QR neurons of a finished run by `method` (query_id, rank, layer, neuron, score), of one query or all."""
    if method not in qrnca.METHODS:
        raise QRNError(f"unknown method {method!r}; choose one of {', '.join(qrnca.METHODS)}")
    run_id = _finished(con, run_id).run_id
    if query_id is None:
        return con.execute(SELECT_QR, [run_id, method]).df()
    return con.execute(SELECT_QR_QUERY, [run_id, method, query_id]).df()


def evaluations(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """All stored evaluation numbers of a run (method, evaluation, group_name, metric, value)."""
    return con.execute(SELECT_EVALUATIONS, [run_info(con, run_id).run_id]).df()


def group_accuracy(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per group of a run's done queries: queries, accuracy (share of templates answered right) and mean P(correct)."""
    return con.execute(GROUP_ACCURACY, [run_info(con, run_id).run_id]).df()


def stored_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """A run's stored rows (query_id, layer, neuron, na, in_cluster) and their (rows, templates) float32 IG.

    The IG is None for a run stored before schema 2 (no per-template IG).
    """
    run_id = run_info(con, run_id).run_id
    with con.cursor() as cursor:  # Arrow straight from a relation; the connection may hold an unfinished result
        table = cursor.sql(STORED_ROWS, params=[run_id]).to_arrow_table()
    ig = table.column("ig").combine_chunks()
    rows = table.drop_columns(["ig"]).to_pandas()
    if ig.null_count or not len(ig):
        return rows, None
    return rows, ig.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(ig), -1)


def has_template_ig(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    """Whether every stored row of the run keeps its templates' IG (runs stored before schema 2 do not)."""
    missing, total = con.execute(COUNT_NO_IG, [run_info(con, run_id).run_id]).fetchone()
    return total > 0 and missing == 0


def qrnca_at(con: duckdb.DuckDBPyConnection, run_id: str, t: float, u: float, v: int) -> live.LiveQRNCA:
    """The run's QRNCA results at thresholds t, u, v, recomputed from its stored rows (`qrcore.selection.live`); nothing is written."""
    info = _finished(con, run_id)
    rows, ig = stored_rows(con, info.run_id)
    return live.at_thresholds(rows, ig, run_groups(con, info.run_id), info.settings.qrnca, t, u, v)


def template_consistency(con: duckdb.DuckDBPyConnection, run_id: str, t: float | None = None) -> pd.DataFrame:
    """Per query of the run: `consistency.template_consistency` at t (default the run's) with its group_name.

    QRNError for a run without per-template IG, or for t below the run's storage floor.
    """
    info = _finished(con, run_id)
    t = live.check_t(info.settings.qrnca, info.settings.qrnca.t if t is None else t)
    rows, ig = stored_rows(con, info.run_id)
    if ig is None:
        raise QRNError(
            f"run {info.name!r} was stored without per-template IG (before store schema 2), so template "
            "consistency is not available for it; recompute the run with `qrn run` to see it."
        )
    out = consistency.template_consistency(rows["query_id"], ig, t)
    return out.assign(group_name=out["query_id"].map(run_groups(con, info.run_id)))


def cluster_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[pd.DataFrame, int]:
    """The run's cluster count per stored neuron (layer, neuron, n_clusters) and its number of clusters |C|."""
    info = _finished(con, run_id)
    return con.execute(RUN_COUNTS, [info.run_id]).df(), info.n_clusters


def run_model(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[str, str]:
    """(fingerprint, name) of the model a run was computed with."""
    return con.execute(RUN_MODEL, [run_info(con, run_id).run_id]).fetchone()


def neuron_card(con: duckdb.DuckDBPyConnection, run_id: str, layer: int, neuron: int) -> card.NeuronCard:
    """One neuron of a finished run (`card.build_card`); QRNError for a neuron outside the run's model."""
    info = _finished(con, run_id)
    card.check_neuron(layer, neuron, info.n_layers, info.n_neurons)
    args = [info.run_id, layer, neuron]
    return card.build_card(
        layer,
        neuron,
        con.execute(NEURON_ROWS, args).df(),
        con.execute(NEURON_QR, args).df(),
        con.execute(NEURON_TOP, args).df(),
        run_groups(con, info.run_id),
        info.settings.qrnca.u,
    )


def _finished(con: duckdb.DuckDBPyConnection, run_id: str) -> RunInfo:
    """`run_info`, requiring the run-level results that `finalize_run` writes."""
    info = run_info(con, run_id)
    if info.n_clusters is None:
        raise QRNError(f"run {info.name!r} has no run-level results yet; they are computed when its run finishes")
    return info


def run_groups(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, str]:
    """query_id -> group of the run's done queries."""
    return dict(con.execute(RUN_GROUPS, [run_id]).fetchall())


def _open(path: Path, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retrying while another process holds the file; QRNError for a file DuckDB cannot read."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as err:
            message = str(err)
            if "Could not set lock" not in message:
                raise _unreadable(path, message) from None
            if time.monotonic() >= deadline:
                pid = re.search(r"PID (\d+)", message)
                raise QRNError(
                    f"{path} is in use by another process (pid {pid[1] if pid else 'unknown'}) for more "
                    f"than {wait:g} s; try again when it is done or use another --db"
                ) from None
            time.sleep(0.05)


def _unreadable(path: Path, message: str) -> QRNError:
    """The error for a file DuckDB refused to open: damaged if it is a DuckDB file, else not one or unreadable."""
    if _is_duckdb(path):
        return _damaged(path, f"DuckDB cannot open it ({message.splitlines()[0]})")
    what = (
        "not a DuckDB database"
        if "not a valid DuckDB database" in message
        else f"unreadable by DuckDB {duckdb.__version__}: {message.splitlines()[0]}"
    )
    return QRNError(f"{path} is {what}; pass another --db or move the file away")


def _damaged(path: Path, what: str) -> QRNError:
    """The one-line refusal of a damaged store."""
    return QRNError(f"{path} is damaged: {what}; restore a copy or pass another --db")


def _is_duckdb(path: Path) -> bool:
    """Whether the file starts like a DuckDB database."""
    with path.open("rb") as f:
        return f.read(12)[8:] == DUCKDB_MAGIC


def _check_tables(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The store's schema version (0 for an empty file) after `_check_blocks`; QRNError for a foreign, damaged or
    newer file."""
    tables = [row[0] for row in con.execute(LIST_TABLES).fetchall()]
    if "meta" not in tables:
        if tables:
            raise QRNError(
                f"{path} is not a QR Neuron Explorer store (no meta table); pass another --db or move the file away"
            )
        return 0
    try:
        meta = dict(con.execute(SELECT_META).fetchall())
    except (duckdb.BinderException, duckdb.CatalogException):
        meta = {}
    if meta.get("app") != APP:
        raise QRNError(
            f"{path} is not a QR Neuron Explorer store (its meta table is not ours); "
            "pass another --db or move the file away"
        )
    _check_blocks(con, path)
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise _damaged(path, f"its schema_version is {version!r}")
    if int(version) > SCHEMA_VERSION:
        raise QRNError(
            f"{path} has store schema {version}, newer than this qrn's {SCHEMA_VERSION}; "
            "upgrade qrn or pass another --db"
        )
    return int(version)


def _check_blocks(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Read every table's storage metadata; QRNError if that fails or uses a block beyond the end of the file."""
    st = path.stat()
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if version in _SOUND:
        return
    try:
        last = con.execute(LAST_CATALOG_BLOCK).fetchone()[0]
        for (table,) in con.execute(BASE_TABLES).fetchall():
            last = max(last, con.execute(LAST_TABLE_BLOCK, [table]).fetchone()[0])
        block_size = con.execute(BLOCK_SIZE).fetchone()[0]
    except duckdb.Error as err:
        raise _damaged(path, f"its tables cannot be read ({str(err).splitlines()[0]})") from None
    needed = DUCKDB_HEADERS + (last + 1) * block_size
    if st.st_size < needed:
        raise _damaged(path, f"the file is {st.st_size:,} bytes but its tables use blocks up to byte {needed:,}")
    _SOUND.add(version)


def _close_unwritten(con: duckdb.DuckDBPyConnection) -> None:
    """Close a connection to a refused file without DuckDB's checkpoint, which would write a pending log into it."""
    try:
        con.execute(NO_CHECKPOINT_ON_CLOSE)
    except duckdb.Error:
        pass  # a read-only connection never checkpoints
    con.close()


def _create(path: Path) -> None:
    """Build a new, empty store in a temporary file and link it into place, unless another process was first."""
    tmp = _temp_path(path)
    try:
        _build(tmp, 0)
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created the store meanwhile: use that one
    finally:
        _remove_temp(tmp)


def _migrate(con: duckdb.DuckDBPyConnection, path: Path, version: int) -> None:
    """Upgrade a copy of the store from `version` to SCHEMA_VERSION and move it over the store when complete.

    `con`, a read-write connection to the store, keeps other processes out meanwhile; its pending write-ahead log is
    checkpointed first so that the copy holds every committed row. On failure the store is unchanged.
    """
    tmp = _temp_path(path)
    try:
        con.execute(CHECKPOINT)
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)
        _build(tmp, version)
        os.replace(tmp, path)
    except (duckdb.Error, OSError) as err:
        raise QRNError(
            f"could not upgrade {path} from store schema {version} to {SCHEMA_VERSION} "
            f"({str(err).splitlines()[0]}); the file is unchanged"
        ) from None
    finally:
        _remove_temp(tmp)


def _build(path: Path, version: int) -> None:
    """Apply MIGRATIONS from `version` up to SCHEMA_VERSION to the (temporary) store at `path` and checkpoint it."""
    con = duckdb.connect(str(path))
    try:
        with _transaction(con):
            con.execute(CREATE_META)
            con.execute(SET_META, ["app", APP])
            for step in range(version, SCHEMA_VERSION):
                for sql in MIGRATIONS[step]:
                    con.execute(sql)
            con.execute(SET_META, ["schema_version", str(SCHEMA_VERSION)])
        con.execute(CHECKPOINT)
    finally:
        con.close()


def _temp_path(path: Path) -> Path:
    """This process's temporary file for building or upgrading the store at `path`."""
    return path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")


def _remove_stale_temps(path: Path) -> None:
    """Remove the temporary stores (and their logs) that killed processes left beside `path`."""
    for stale in path.parent.glob(f".{path.name}{TEMP_INFIX}*"):
        pid = stale.name.removeprefix(f".{path.name}{TEMP_INFIX}").split(".")[0]
        if pid.isdigit() and not alive(int(pid)):
            stale.unlink(missing_ok=True)


def _remove_temp(tmp: Path) -> None:
    """Remove a temporary store and its write-ahead log, if there."""
    for p in (tmp, Path(f"{tmp}.wal")):
        p.unlink(missing_ok=True)


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back if anything inside raises."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


def _execute_with(con: duckdb.DuckDBPyConnection, sql: str, frame: pd.DataFrame, *params: object) -> None:
    """Run `sql` (which reads FRAME) with `frame` registered as FRAME and `params` bound to its `?`."""
    con.register(FRAME, frame)
    try:
        con.execute(sql, list(params))
    finally:
        con.unregister(FRAME)


def _query_record(q: Query) -> dict:
    """The stored fields of a query that make up its dataset's content (Query.meta is kept but not compared)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(q).items() if k != "meta"}


def _digest(*parts: str) -> str:
    """A 16-hex-digit id from the parts (sha256 of them joined by NUL)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _run_diff(stored: Sequence[str], new: Sequence[str]) -> str:
    """Names what differs between a stored run's (model, dataset, settings json, code version) and a new one."""
    labels = ("model", "dataset", "settings", "code version")
    parts = []
    for label, old, cur in zip(labels, stored, new):
        if old == cur:
            continue
        if label == "settings":
            before, after = _flat(json.loads(old)), _flat(json.loads(cur))
            changed = [
                f"{k} {before.get(k)} -> {after.get(k)}"
                for k in sorted(before.keys() | after.keys())
                if before.get(k) != after.get(k)
            ]
            parts.append(f"settings ({', '.join(changed)})")
        else:
            parts.append(f"{label} ({old} -> {cur})")
    return ", ".join(parts)


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested settings dict as {'qrnca.v': 20, ...}."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
