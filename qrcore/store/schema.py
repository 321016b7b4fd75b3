"""The store's tables, their schema version and the migrations between versions.

A new store and every migration are built in a temporary copy and moved into place only when complete, so a killed
upgrade leaves the old file as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import shutil

import duckdb

from qrcore import __version__
from qrcore.errors import QRNError
from qrcore.processes import alive
from qrcore.store.sql import transaction

SCHEMA_VERSION = 3
RESULTS_SCHEMA = 2
"""The last schema version that changed what a run computes and stores per query; later versions only add tables
derived from finished runs (the top queries, version 3), so runs keep their ids across them."""
CODE_VERSION = f"{__version__}+schema{RESULTS_SCHEMA}"
"""Part of every run id: results computed by another code or schema version are never mixed in."""
APP = "qr-neuron-explorer"
"""meta 'app' value that marks a file as ours."""
TEMP_INFIX = ".building-"
"""A store is built or upgraded in "<db dir>/.<db name>.building-<pid>" and then moved into place."""
# meta(key, value): 'app' = APP and 'schema_version'; a file without it is not ours.
CREATE_META = "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)"
SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
SELECT_META = "SELECT key, value FROM meta"
CHECKPOINT = "CHECKPOINT"
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
    # qr_neurons: the selected neurons of every query by every method of settings.METHODS.
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
SCHEMA_V3 = [
    # top_queries: per neuron of a run, its TOP_QUERIES queries of the highest activation f at the answer position
    # (mean over templates) among the queries in top_queries_done (qrcore.selection.activations, `qrn activations`).
    """CREATE TABLE top_queries (run_id VARCHAR NOT NULL, layer SMALLINT NOT NULL, neuron INTEGER NOT NULL,
        query_id VARCHAR NOT NULL, activation REAL NOT NULL)""",
    """CREATE TABLE top_queries_done (run_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL,
        PRIMARY KEY (run_id, query_id))""",
]
MIGRATIONS: dict[int, list[str]] = {0: SCHEMA_V1, 1: SCHEMA_V2, 2: SCHEMA_V3}
"""Statements that take a store from version k to k + 1; version 0 is a new or empty store."""
CREATED_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)


def tables(version: int) -> set[str]:
    """The tables a store of `version` has: meta and those the MIGRATIONS up to it create."""
    made = (CREATED_TABLE.match(sql.strip()) for step in range(version) for sql in MIGRATIONS[step])
    return {"meta", *(m[1] for m in made if m)}


def create(path: Path) -> None:
    """Build a new, empty store in a temporary file and link it into place, unless another process was first."""
    tmp = temp_path(path)
    try:
        build(tmp, 0)
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created the store meanwhile: use that one
    finally:
        remove_temp(tmp)


def migrate(con: duckdb.DuckDBPyConnection, path: Path, version: int) -> None:
    """Upgrade a copy of the store from `version` to SCHEMA_VERSION and move it over the store when complete.

    `con`, a read-write connection to the store, keeps other processes out meanwhile; its pending write-ahead log is
    checkpointed first so that the copy holds every committed row. On failure the store is unchanged.
    """
    tmp = temp_path(path)
    try:
        con.execute(CHECKPOINT)
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)
        build(tmp, version)
        os.replace(tmp, path)
    except (duckdb.Error, OSError) as err:
        raise QRNError(
            f"could not upgrade {path} from store schema {version} to {SCHEMA_VERSION} "
            f"({str(err).splitlines()[0]}); the file is unchanged"
        ) from None
    finally:
        remove_temp(tmp)


def build(path: Path, version: int) -> None:
    """Apply MIGRATIONS from `version` up to SCHEMA_VERSION to the (temporary) store at `path` and checkpoint it."""
    con = duckdb.connect(str(path))
    try:
        with transaction(con):
            con.execute(CREATE_META)
            con.execute(SET_META, ["app", APP])
            for step in range(version, SCHEMA_VERSION):
                for sql in MIGRATIONS[step]:
                    con.execute(sql)
            con.execute(SET_META, ["schema_version", str(SCHEMA_VERSION)])
        con.execute(CHECKPOINT)
    finally:
        con.close()


def temp_path(path: Path) -> Path:
    """This process's temporary file for building or upgrading the store at `path`."""
    return path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary stores (and their logs) that killed processes left beside `path`."""
    for stale in path.parent.glob(f".{path.name}{TEMP_INFIX}*"):
        pid = stale.name.removeprefix(f".{path.name}{TEMP_INFIX}").split(".")[0]
        if pid.isdigit() and not alive(int(pid)):
            stale.unlink(missing_ok=True)


def remove_temp(tmp: Path) -> None:
    """Remove a temporary store and its write-ahead log, if there."""
    for p in (tmp, Path(f"{tmp}.wal")):
        p.unlink(missing_ok=True)
