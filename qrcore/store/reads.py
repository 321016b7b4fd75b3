"""Readers: the stored rows of models, datasets, runs and their results, as DataFrames, for the later stages, the
command line and the explorer (which compute from them: `qrcore.evaluation.run_analyses`). They take a run's id or
its name; most need the run-level results that `writes.write_run_results` stores."""

from __future__ import annotations

from dataclasses import dataclass
import json
from typing import cast

import duckdb
import numpy as np
import pandas as pd

from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.settings import METHODS, RunSettings
from qrcore.store.sql import one_row

FIND_DATASET = "SELECT dataset_id FROM datasets WHERE dataset_id = ? OR name = ?"
SELECT_QUERIES = """SELECT query_id, group_name, question, answer, distractors_json, relation, prompts_json,
    labels_json, meta_json FROM queries WHERE dataset_id = ? ORDER BY position"""
RUN_DATASET = "SELECT dataset_id FROM runs WHERE run_id = ?"
RUN_INFO = """SELECT u.run_id, u.name, u.settings_json, u.status, u.n_clusters, m.n_layers, m.n_neurons,
        u.model_id, m.name FROM runs u JOIN models m ON m.model_id = u.model_id WHERE u.run_id = ? OR u.name = ?"""
RUN_PROGRESS = """SELECT (SELECT count(*) FROM query_results r WHERE r.run_id = u.run_id),
        (SELECT count(*) FROM queries q WHERE q.dataset_id = u.dataset_id) FROM runs u WHERE u.run_id = ?"""
ALL_RUN_NAMES = "SELECT name FROM runs ORDER BY name"
DONE_QUERIES = "SELECT query_id FROM query_results WHERE run_id = ?"
RUN_GROUPS = """SELECT r.query_id, q.group_name FROM query_results r JOIN runs u ON u.run_id = r.run_id
    JOIN queries q ON q.dataset_id = u.dataset_id AND q.query_id = r.query_id WHERE r.run_id = ?"""
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
SELECT_ATTRIBUTIONS = "SELECT query_id, layer, neuron, na, in_cluster FROM attributions WHERE run_id = ?"
SELECT_TOP = "SELECT query_id, layer, neuron, activation FROM top_activations WHERE run_id = ?"
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


def done_query_ids(con: duckdb.DuckDBPyConnection, run_id: str) -> set[str]:
    """Ids of the run's queries whose results are stored (a resumed run skips them)."""
    return {row[0] for row in con.execute(DONE_QUERIES, [run_id]).fetchall()}


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


def complete_run(con: duckdb.DuckDBPyConnection, run: str) -> RunInfo:
    """`run_info` of a run whose every query is stored and whose run-level results were computed after the last one
    (status 'finished'); QRNError naming its progress otherwise."""
    info = run_info(con, run)
    if info.status != "finished":
        done, total = one_row(con, RUN_PROGRESS, [info.run_id])
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
    return one_row(con, RUN_DATASET, [run_id])[0]


def list_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """All runs with model, dataset, status and progress (n_done of n_queries), oldest first."""
    return con.execute(LIST_RUNS).df()


def heatmap_rows(con: duckdb.DuckDBPyConnection, run_id: str, group: str) -> pd.DataFrame:
    """Fig. 5's stored rows of a group (layer, neuron, score): NAICA summed over the group's queries, nonzero only."""
    info = run_with_results(con, run_id)
    rows = con.execute(SELECT_HEATMAP, [info.run_id, group]).df()
    if rows.empty and group not in heatmap_groups(con, info.run_id):
        raise QRNError(
            f"run {info.name!r} has no group {group!r}; groups: {', '.join(heatmap_groups(con, info.run_id))}"
        )
    return rows


def heatmap_groups(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """The groups that have a heatmap in a run with results, sorted."""
    return [row[0] for row in con.execute(HEATMAP_GROUPS, [run_with_results(con, run_id).run_id]).fetchall()]


def common_neuron_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Sec. 4.4: the stored rows (layer, neuron, n_clusters) of the run's common neurons, unordered."""
    return con.execute(SELECT_COMMON, [run_with_results(con, run_id).run_id]).df()


def query_rows(con: duckdb.DuckDBPyConnection, run_id: str, query_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One query's stored rows (query_id, layer, neuron, na, in_cluster, ig) and its neurons' stats (layer, neuron,
    n_clusters, ica, is_common); QRNError for a query without rows or computed after the run's results."""
    info = run_with_results(con, run_id)
    sparse = con.execute(QUERY_ATTRIBUTIONS, [info.run_id, query_id]).df()
    if sparse.empty:
        raise QRNError(f"run {info.name!r} has no stored neurons for query {query_id!r}; pick a query of its dataset")
    stats = con.execute(QUERY_STATS, [info.run_id, query_id]).df()
    if len(stats) < len(sparse):
        raise QRNError(f"query {query_id!r} was computed after run {info.name!r} was finalized; finalize it again")
    return sparse, stats


def qr_neurons(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str = "qrnca", query_id: str | None = None
) -> pd.DataFrame:
    """QR neurons of a run with results by `method` (query_id, rank, layer, neuron, score), of one query or all."""
    if method not in METHODS:
        raise QRNError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    run_id = run_with_results(con, run_id).run_id
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


def attribution_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """A run's stored rows without their IG (query_id, layer, neuron, na, in_cluster), unordered."""
    return con.execute(SELECT_ATTRIBUTIONS, [run_info(con, run_id).run_id]).df()


def top_activation_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """A run's stored top activations (query_id, layer, neuron, activation), unordered."""
    return con.execute(SELECT_TOP, [run_info(con, run_id).run_id]).df()


def has_template_ig(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    """Whether every stored row of the run keeps its templates' IG (runs stored before schema 2 do not)."""
    missing, total = one_row(con, COUNT_NO_IG, [run_info(con, run_id).run_id])
    return total > 0 and missing == 0


def cluster_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[pd.DataFrame, int]:
    """The run's cluster count per stored neuron (layer, neuron, n_clusters) and its number of clusters |C|."""
    info = run_with_results(con, run_id)
    return con.execute(RUN_COUNTS, [info.run_id]).df(), cast(int, info.n_clusters)  # run_with_results checked it


def run_model(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[str, str]:
    """(fingerprint, name) of the model a run was computed with."""
    fingerprint, name = one_row(con, RUN_MODEL, [run_info(con, run_id).run_id])
    return fingerprint, name


def neuron_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, layer: int, neuron: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One neuron's stored rows: its attributions (query_id, na, in_cluster), the queries it is a QRNCA neuron of
    (query_id, rank) and its top activations (query_id, activation)."""
    args = [run_with_results(con, run_id).run_id, layer, neuron]
    return con.execute(NEURON_ROWS, args).df(), con.execute(NEURON_QR, args).df(), con.execute(NEURON_TOP, args).df()


def run_with_results(con: duckdb.DuckDBPyConnection, run_id: str) -> RunInfo:
    """`run_info` of a run whose run-level results are stored (`finalize_run` ran at least once; queries added
    since are not in them, `complete_run` checks that); QRNError otherwise."""
    info = run_info(con, run_id)
    if info.n_clusters is None:
        raise QRNError(f"run {info.name!r} has no run-level results yet; they are computed when its run finishes")
    return info


def run_groups(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, str]:
    """query_id -> group of the run's done queries."""
    return dict(con.execute(RUN_GROUPS, [run_id]).fetchall())
