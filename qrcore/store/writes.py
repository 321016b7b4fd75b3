"""Writers: models, datasets, runs, each query's rows (all or nothing), the run-level QRNCA results, evaluations.

Tables have no foreign keys (DuckDB's make deletes order-dependent); every writer keeps them consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
import hashlib
import json

import duckdb
import numpy as np
import pandas as pd

from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.settings import RunSettings
from qrcore.store.reads import FIND_DATASET
from qrcore.store.schema import CODE_VERSION
import qrcore.store.sql as sql  # sql.execute_with looked up at each call: tests make it fail midway
from qrcore.store.sql import FRAME, transaction

INSERT_MODEL = "INSERT OR IGNORE INTO models (model_id, name, architecture, n_layers, n_neurons, config_json) VALUES (?, ?, ?, ?, ?, ?)"
DATASET_BY_NAME = "SELECT dataset_id, (SELECT count(*) FROM queries q WHERE q.dataset_id = d.dataset_id) FROM datasets d WHERE name = ?"
INSERT_DATASET = "INSERT INTO datasets (dataset_id, name, source) VALUES (?, ?, ?)"
INSERT_QUERIES = f"""INSERT INTO queries SELECT ?, query_id, position, group_name, question, answer, distractors_json,
    relation, prompts_json, labels_json, meta_json FROM {FRAME}"""
FIND_MODEL = "SELECT 1 FROM models WHERE model_id = ?"
RUN_BY_NAME = "SELECT run_id, model_id, dataset_id, settings_json, code_version FROM runs WHERE name = ?"
RUN_NAME_BY_ID = "SELECT name FROM runs WHERE run_id = ?"
INSERT_RUN = "INSERT INTO runs (run_id, name, model_id, dataset_id, settings_json, code_version, status) VALUES (?, ?, ?, ?, ?, ?, 'running')"
DELETE_QUERY_ROWS = [
    f"DELETE FROM {table} WHERE run_id = ? AND query_id IN (SELECT query_id FROM {FRAME})"
    for table in ("query_results", "attributions", "top_activations")
]
INSERT_ATTRIBUTIONS = f"INSERT INTO attributions SELECT ?, query_id, layer, neuron, na, in_cluster, ig FROM {FRAME}"
INSERT_TOP = f"INSERT INTO top_activations SELECT ?, query_id, layer, neuron, activation FROM {FRAME}"
INSERT_RESULTS = f"INSERT INTO query_results SELECT ?, query_id, correct_prob, accuracy, seconds FROM {FRAME}"
MARK_RUNNING = "UPDATE runs SET status = 'running', finished = NULL WHERE run_id = ? AND status <> 'running'"
DELETE_DERIVED = [f"DELETE FROM {table} WHERE run_id = ?" for table in ("neuron_stats", "qr_neurons", "heatmaps")]
INSERT_STATS = f"INSERT INTO neuron_stats SELECT ?, layer, neuron, n_clusters, ica, is_common FROM {FRAME}"
INSERT_QR = f"INSERT INTO qr_neurons SELECT ?, method, query_id, rank, layer, neuron, score FROM {FRAME}"
INSERT_HEATMAPS = f"INSERT INTO heatmaps SELECT ?, group_name, layer, neuron, score FROM {FRAME}"
MARK_FINISHED = "UPDATE runs SET status = 'finished', finished = current_timestamp, n_clusters = ? WHERE run_id = ?"
DELETE_EVALUATIONS = (
    f"DELETE FROM evaluations WHERE run_id = ? AND (method, evaluation) IN (SELECT method, evaluation FROM {FRAME})"
)
INSERT_EVALUATIONS = f"INSERT INTO evaluations SELECT ?, method, evaluation, group_name, metric, value FROM {FRAME}"


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
    with transaction(con):
        con.execute(INSERT_DATASET, [dataset_id, name, source])
        sql.execute_with(con, INSERT_QUERIES, frame, dataset_id)
    return dataset_id


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
        diff = run_diff(stored[1:], (model_id, dataset_id, settings_json, code_version))
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


def store_run(
    con: duckdb.DuckDBPyConnection,
    model_row: dict,
    dataset: tuple[str, str, Sequence[Query]],
    name: str,
    settings: RunSettings,
    code_version: str = CODE_VERSION,
) -> str:
    """Store a run's model (`upsert_model` arguments), dataset (name, source, queries) and run in one transaction;
    the run id. A refusal (a dataset name or run name taken by other content) leaves no row of the three."""
    with transaction(con):
        model_id = upsert_model(con, **model_row)
        dataset_id = upsert_dataset(con, *dataset)
        return get_or_create_run(con, name, model_id, dataset_id, settings, code_version)


def write_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, results: pd.DataFrame, sparse: pd.DataFrame, top: pd.DataFrame
) -> None:
    """Replace the rows of the queries in `results` in one transaction: all of them are stored, or none.

    `results` (query_id, correct_prob, accuracy, seconds), `sparse` (`qrcore.selection.qrnca.sparsify` rows) and `top`
    (`top_activations` rows) may hold many queries, for bulk loads.
    """
    with transaction(con):
        for statement in DELETE_QUERY_ROWS:
            sql.execute_with(con, statement, results[["query_id"]], run_id)
        sql.execute_with(con, INSERT_ATTRIBUTIONS, sparse, run_id)
        sql.execute_with(con, INSERT_TOP, top, run_id)
        sql.execute_with(con, INSERT_RESULTS, results, run_id)
        con.execute(MARK_RUNNING, [run_id])


def write_run_results(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    stats: pd.DataFrame,
    qr: pd.DataFrame,
    heatmaps: pd.DataFrame,
    n_clusters: int,
) -> None:
    """Replace a run's run-level results in one transaction and mark it finished with |C| = n_clusters.

    `stats` (layer, neuron, n_clusters, ica, is_common), `qr` (method, query_id, rank, layer, neuron, score) and
    `heatmaps` (group_name, layer, neuron, score), as `qrcore.selection.qrnca.run_results` computes them.
    """
    with transaction(con):
        for statement in DELETE_DERIVED:
            con.execute(statement, [run_id])
        sql.execute_with(con, INSERT_STATS, stats, run_id)
        sql.execute_with(con, INSERT_QR, qr, run_id)
        sql.execute_with(con, INSERT_HEATMAPS, heatmaps, run_id)
        con.execute(MARK_FINISHED, [n_clusters, run_id])


def write_evaluations(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str, evaluation: str, rows: pd.DataFrame
) -> None:
    """Replace one evaluation's numbers (rows: group_name, metric, value), e.g. evaluation 'suppress', metric 'pcr'."""
    replace_evaluations(
        con, run_id, rows[["group_name", "metric", "value"]].assign(method=method, evaluation=evaluation)
    )


def replace_evaluations(con: duckdb.DuckDBPyConnection, run_id: str, rows: pd.DataFrame) -> None:
    """Replace the numbers of every (method, evaluation) in `rows` (method, evaluation, group_name, metric, value) in
    one transaction, so that a killed `qrn evaluate` leaves the run's evaluation whole or as it was."""
    frame = rows[["method", "evaluation", "group_name", "metric", "value"]]
    with transaction(con):
        sql.execute_with(con, DELETE_EVALUATIONS, frame, run_id)
        sql.execute_with(con, INSERT_EVALUATIONS, frame, run_id)


def _query_record(q: Query) -> dict:
    """The stored fields of a query that make up its dataset's content (Query.meta is kept but not compared)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(q).items() if k != "meta"}


def _digest(*parts: str) -> str:
    """A 16-hex-digit id from the parts (sha256 of them joined by NUL)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def run_diff(stored: Sequence[str], new: Sequence[str]) -> str:
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
