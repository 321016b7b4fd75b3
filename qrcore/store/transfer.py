"""Runs as Parquet files, one per table: `qrn export` writes them; `qrn import` and the shipped runs load them.

Rows load by column name, so exports of older schema versions (fewer columns) load too. Only runs the store lacks are
loaded, so no row is ever doubled; a run or dataset whose name the store already gives to another one is loaded under
its name and its id's first 8 digits (the store's own runs are never renamed or replaced).
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qrcore.atomic import files_into
from qrcore.errors import QRNError
from qrcore.names import check_name
from qrcore.outputs import make_folder
from qrcore.progress import Progress
from qrcore.store.reads import complete_run
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
    "top_queries",
    "top_queries_done",
)
OPTIONAL_TABLES = ("top_queries", "top_queries_done")
"""Tables an export may lack (written before schema 3); a stored run without them gets them from a later export."""
_IN_RUNS = "(SELECT unnest(?::VARCHAR[]))"
EXPORT_SELECT = {
    "models": f"SELECT * FROM models WHERE model_id IN (SELECT model_id FROM runs WHERE run_id IN {_IN_RUNS})",
    "datasets": f"SELECT * FROM datasets WHERE dataset_id IN (SELECT dataset_id FROM runs WHERE run_id IN {_IN_RUNS})",
    "queries": f"SELECT * FROM queries WHERE dataset_id IN (SELECT dataset_id FROM runs WHERE run_id IN {_IN_RUNS})",
    **{t: f"SELECT * FROM {t} WHERE run_id IN {_IN_RUNS}" for t in EXPORT_TABLES[3:]},
}
FREE_NAME = """CASE WHEN name NOT IN (SELECT name FROM {table}) THEN name
    WHEN name || '-' || left({key}, 8) NOT IN (SELECT name FROM {table}) THEN name || '-' || left({key}, 8)
    ELSE name || '-' || {key} END"""
"""An imported row's name: its own, else with its id's first 8 digits, else with its whole id, whichever is free."""
IMPORT_SHARED = {
    "models": "INSERT OR IGNORE INTO models BY NAME SELECT * FROM read_parquet(?)",
    "datasets": f"""INSERT INTO datasets BY NAME
        SELECT * REPLACE ({FREE_NAME.format(table="datasets", key="dataset_id")} AS name) FROM read_parquet(?)
        WHERE dataset_id NOT IN (SELECT dataset_id FROM datasets)""",
    "queries": "INSERT OR IGNORE INTO queries BY NAME SELECT * FROM read_parquet(?)",
}
"""Rows that runs share: bound to the Parquet file only."""
IMPORT_RUN_ROWS = {
    "runs": f"""INSERT INTO runs BY NAME SELECT * REPLACE ({FREE_NAME.format(table="runs", key="run_id")} AS name)
        FROM read_parquet(?) WHERE run_id IN {_IN_RUNS}""",
    **{
        t: f"INSERT INTO {t} BY NAME SELECT * FROM read_parquet(?) WHERE run_id IN {_IN_RUNS}"
        for t in EXPORT_TABLES[4:]
    },
}
"""A run's own rows: bound to the Parquet file and the ids of the runs to load."""
STORED_RUNS = f"SELECT run_id FROM runs WHERE run_id IN {_IN_RUNS}"
RUNS_WITH_TOP_QUERIES = f"SELECT DISTINCT run_id FROM top_queries_done WHERE run_id IN {_IN_RUNS}"
EXPORTED_TOP_QUERIES = "SELECT DISTINCT run_id FROM read_parquet(?)"


def export_runs(con: duckdb.DuckDBPyConnection, runs: Sequence[str], folder: str | os.PathLike) -> dict[str, int]:
    """Write every row of the given runs (and their models, datasets and queries) as one Parquet file per table."""
    ids = [complete_run(con, r).run_id for r in runs]
    counts = {}
    with files_into(make_folder(folder)) as out:  # a full disk leaves no partial export
        for table, sql in EXPORT_SELECT.items():
            frame = con.execute(sql, [ids]).df()
            frame.to_parquet(out / f"{table}.parquet", compression="zstd", index=False)
            counts[table] = len(frame)
    return counts


def has_runs(con: duckdb.DuckDBPyConnection, folder: str | os.PathLike) -> bool:
    """Whether every run of an `export_runs` folder is in the store, with the folder's top queries."""
    return not _new_runs(con, Path(folder)) and not _lacking_top_queries(con, Path(folder))


def import_runs(con: duckdb.DuckDBPyConnection, folder: str | os.PathLike, progress: Progress | None = None) -> bool:
    """Load the runs of an `export_runs` folder that the store lacks, in one transaction; True if any was loaded.

    `progress(done, total, table)` follows each table, in bytes of Parquet read (the attributions dominate).
    """
    folder = Path(folder)
    new, lacking = _new_runs(con, folder), _lacking_top_queries(con, folder)
    if not new and not lacking:
        return False
    files = {table: folder / f"{table}.parquet" for table in EXPORT_TABLES}
    files = {t: f for t, f in files.items() if t not in OPTIONAL_TABLES or f.is_file()}
    total, done = sum(f.stat().st_size for f in files.values()), 0
    try:
        with transaction(con):
            for table, sql in (IMPORT_SHARED | IMPORT_RUN_ROWS).items():
                if table not in files or (not new and table not in OPTIONAL_TABLES):
                    continue
                runs = new + lacking if table in OPTIONAL_TABLES else new
                con.execute(sql, [str(files[table]), runs] if table in IMPORT_RUN_ROWS else [str(files[table])])
                done += files[table].stat().st_size
                if progress:
                    progress(done, total, table)
    except (duckdb.ConstraintException, duckdb.BinderException, duckdb.ConversionException) as err:
        raise QRNError(
            f"{folder} cannot be loaded into this store ({str(err).splitlines()[0]}); nothing was loaded: pass a "
            "folder that qrn export wrote, or another --db"
        ) from None
    return True


def exported_run_ids(folder: str | os.PathLike) -> list[str]:
    """Ids of the runs of an `export_runs` folder; a folder that lacks one of its tables, or a run or dataset whose
    name breaks `qrcore.names`' rule, raises QRNError."""
    folder = Path(folder)
    missing = [
        f"{table}.parquet"
        for table in EXPORT_TABLES
        if table not in OPTIONAL_TABLES and not (folder / f"{table}.parquet").is_file()
    ]
    if missing:
        more = f" and {len(missing) - 1} more of the tables qrn export writes" if len(missing) > 1 else ""
        raise QRNError(
            f"{folder} is not a folder of exported runs: it lacks {missing[0]}{more}; pass a folder that qrn export wrote"
        )
    present = [table for table in EXPORT_TABLES if (folder / f"{table}.parquet").is_file()]
    tables = {table: _read_export_table(folder / f"{table}.parquet") for table in present}
    runs, datasets = tables["runs"], tables["datasets"]
    for what, names in (("run", runs["name"]), ("dataset", datasets["name"])):
        for name in names:
            check_name(name, f"{folder}: {what} name", "this qrn loads only exports whose names follow it")
    return runs["run_id"].tolist()


def _read_export_table(path: Path) -> pd.DataFrame:
    """One table of an export folder, read whole (so that a garbage, empty or cut-short file is refused before the
    store is opened); one-line QRNError if it is not a Parquet file with the columns qrn export writes."""
    needed = {"runs": ["run_id", "name"], "datasets": ["dataset_id", "name"]}.get(path.stem, [])
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise QRNError(
            f"{path} is not a readable Parquet file ({str(err).splitlines()[0]}); export the runs again (qrn export)"
        ) from None
    lacking = [c for c in needed if c not in frame.columns]
    if lacking:
        raise QRNError(f"{path} lacks the column {lacking[0]!r}; export the runs again (qrn export)")
    return frame


def _new_runs(con: duckdb.DuckDBPyConnection, folder: Path) -> list[str]:
    """Ids of the folder's runs that are not in the store."""
    ids = exported_run_ids(folder)
    stored = {row[0] for row in con.execute(STORED_RUNS, [ids]).fetchall()}
    return [i for i in ids if i not in stored]


def _lacking_top_queries(con: duckdb.DuckDBPyConnection, folder: Path) -> list[str]:
    """Ids of the folder's runs that the store holds without top queries while the folder has them."""
    path = folder / "top_queries_done.parquet"
    if not path.is_file():
        return []
    exported = [row[0] for row in con.execute(EXPORTED_TOP_QUERIES, [str(path)]).fetchall()]
    stored = {row[0] for row in con.execute(STORED_RUNS, [exported]).fetchall()}
    have = {row[0] for row in con.execute(RUNS_WITH_TOP_QUERIES, [exported]).fetchall()}
    return [r for r in exported if r in stored and r not in have]
