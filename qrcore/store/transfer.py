"""Runs as Parquet files, one per table: `qrn export` writes them; `qrn import` and the shipped runs load them."""

from __future__ import annotations

from collections.abc import Sequence
import os
from pathlib import Path

import duckdb
import pandas as pd

from qrcore.outputs import make_folder
from qrcore.progress import Progress
from qrcore.store.reads import finished_run
from qrcore.store.sql import transaction

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


def import_runs(con: duckdb.DuckDBPyConnection, folder: str | os.PathLike, progress: Progress | None = None) -> bool:
    """Load an `export_runs` folder in one transaction, unless its runs are already stored; True if loaded.

    `progress(done, total, table)` follows each table, in bytes of Parquet read (the attributions dominate).
    """
    folder = Path(folder)
    if has_runs(con, folder):
        return False
    files = {table: folder / f"{table}.parquet" for table in IMPORT_TABLE}
    total, done = sum(f.stat().st_size for f in files.values()), 0
    with transaction(con):
        for table, sql in IMPORT_TABLE.items():
            con.execute(sql, [str(files[table])])
            done += files[table].stat().st_size
            if progress:
                progress(done, total, table)
    return True
