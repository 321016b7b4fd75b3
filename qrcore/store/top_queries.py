"""A run's top queries per neuron (`qrcore.selection.activations.TopQueries`): written as a whole with the queries
they cover, read back to resume, and read per neuron by the neuron card."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from qrcore.store.sql import FRAME, execute_with, transaction

DELETE_TOP_QUERIES = "DELETE FROM top_queries WHERE run_id = ?"
INSERT_TOP_QUERIES = f"INSERT INTO top_queries SELECT ?, layer, neuron, query_id, activation FROM {FRAME}"
INSERT_TOP_QUERIES_DONE = f"INSERT OR IGNORE INTO top_queries_done SELECT ?, query_id FROM {FRAME}"
SELECT_TOP_QUERIES = "SELECT layer, neuron, query_id, activation FROM top_queries WHERE run_id = ?"
SELECT_TOP_QUERIES_DONE = "SELECT query_id FROM top_queries_done WHERE run_id = ?"
SELECT_NEURON_TOP_QUERIES = """SELECT query_id, activation FROM top_queries WHERE run_id = ? AND layer = ? AND neuron = ?
    ORDER BY activation DESC, query_id"""


def write_top_queries(con: duckdb.DuckDBPyConnection, run_id: str, rows: pd.DataFrame, done: Sequence[str]) -> None:
    """Replace the run's top queries by `rows` (`TopQueries.rows()`) that cover the queries `done`, in one transaction."""
    with transaction(con):
        con.execute(DELETE_TOP_QUERIES, [run_id])
        execute_with(con, INSERT_TOP_QUERIES, rows, run_id)
        execute_with(con, INSERT_TOP_QUERIES_DONE, pd.DataFrame({"query_id": list(done)}), run_id)


def read_top_queries(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[pd.DataFrame, list[str]]:
    """The run's stored top-query rows (layer, neuron, query_id, activation) and the queries they cover."""
    rows = con.execute(SELECT_TOP_QUERIES, [run_id]).df()
    done = [r[0] for r in con.execute(SELECT_TOP_QUERIES_DONE, [run_id]).fetchall()]
    return rows.sort_values(["layer", "neuron", "activation"], ascending=[True, True, False], ignore_index=True), done


def neuron_top_queries(con: duckdb.DuckDBPyConnection, run_id: str, layer: int, neuron: int) -> pd.DataFrame:
    """The neuron's stored top queries (query_id, activation), highest first; empty if none are stored."""
    return con.execute(SELECT_NEURON_TOP_QUERIES, [run_id, layer, neuron]).df()


def top_queries_done(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    """How many of the run's queries the stored top queries cover."""
    return len(con.execute(SELECT_TOP_QUERIES_DONE, [run_id]).fetchall())
