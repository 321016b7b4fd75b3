"""Per-query Parquet shards of a data-parallel run (`qrcore.runs.distributed`) and their merge into the store.

A run folder <root>/<run_id>/ holds manifest.json (run name, model, dataset with its queries, settings and
code version: all a merge needs to recreate the run in any store) and rank-<r>/<query id>.parquet, one file
per finished query, written under a temporary name and renamed into place, so a killed process loses at most
the query in flight. A shard's rows are the query's sparse attributions (kind 'sparse', value = NA) and top
activations (kind 'top', value = activation); its Parquet metadata holds the query's result and the key it
was made with (model fingerprint, dataset id, settings, code version), checked against the manifest on merge.
Only the merge writes the store, in one transaction, so shards can come from any number of processes or nodes.
"""

from __future__ import annotations

from dataclasses import asdict
import json
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.model.load import cache_dir
from qrcore.model.spec import LoadedModel
from qrcore.names import check_name
from qrcore.runs import storing
from qrcore.selection import qrnca
from qrcore.settings import QRNCASettings, RunSettings
from qrcore.store.schema import CODE_VERSION
from qrcore.store.sql import transaction
from qrcore.store.writes import run_diff

MANIFEST = "manifest.json"
KEY = ("model", "dataset", "settings", "code_version")
"""What makes shards one run's: model fingerprint, dataset id, settings JSON, code version (`store.writes.run_diff` order)."""
RESULT = ("query_id", "correct_prob", "accuracy", "seconds")
META = b"qrn"
"""Parquet metadata entry of a shard: JSON of its KEY and RESULT fields."""
COLUMNS = ["kind", "layer", "neuron", "value", "in_cluster", "ig"]


def default_root() -> Path:
    """Where run folders go unless --shards says otherwise: <cache>/runs."""
    return cache_dir() / "runs"


def make_manifest(
    lm: LoadedModel, run_name: str, ds_name: str, source: str, queries: list[Query], settings: RunSettings
) -> dict:
    """A run's manifest before it is stored: the rows `open_run` needs for its model, dataset and run."""
    return {
        "run_name": run_name,
        "model": lm.fingerprint,
        "settings": settings.to_json(),
        "code_version": CODE_VERSION,
        "model_row": lm.store_row(),
        "dataset_name": ds_name,
        "dataset_source": source,
        "queries": [asdict(q) for q in queries],
    }


def open_run(con: duckdb.DuckDBPyConnection, manifest: dict) -> dict:
    """Store the manifest's model, dataset and run (no-ops when stored); returns it with 'run_id' and 'dataset' set.

    QRNError, as for `qrn run`, when the run name is taken by another model, dataset or settings.
    """
    m = manifest
    dataset = (m["dataset_name"], m["dataset_source"], queries_of(m))
    settings = RunSettings.from_json(m["settings"])
    run_id = store.store_run(con, m["model_row"], dataset, m["run_name"], settings, m["code_version"])
    return {**m, "run_id": run_id, "dataset": store.run_dataset_id(con, run_id)}


def queries_of(manifest: dict) -> list[Query]:
    """The manifest's queries, in dataset order."""
    records: list[dict[str, Any]] = [
        {k: tuple(v) if isinstance(v, list) else v for k, v in q.items()} for q in manifest["queries"]
    ]
    return [Query(**record) for record in records]


def key_of(manifest: dict) -> dict:
    """The KEY fields of a stored manifest (what every shard of the run must carry)."""
    return {k: manifest[k] for k in KEY}


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write manifest.json into the run folder, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, ensure_ascii=False)))


MANIFEST_FIELDS = {
    "run_name": str,
    "model": str,
    "settings": str,
    "code_version": str,
    "model_row": dict,
    "dataset_name": str,
    "dataset_source": str,
    "queries": list,
}
"""What `make_manifest` writes: each field and its JSON type."""


def read_manifest(folder: Path) -> dict:
    """manifest.json of a run folder; one-line QRNError if there is none, or it is not one that `make_manifest`
    wrote (not JSON, a field missing or of another type, a run name against `qrcore.names`, unreadable queries)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise QRNError(f"{folder} is not a run folder (no {MANIFEST}); pass a folder made by a data-parallel qrn run")
    fix = "copy the run folder again from where the run was made"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise QRNError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
    wrong = [
        k
        for k, kind in MANIFEST_FIELDS.items()
        if not isinstance(manifest, dict) or not isinstance(manifest.get(k), kind)
    ]
    if wrong:
        raise QRNError(f"{path}: the field {wrong[0]!r} is missing or of another type; {fix}")
    check_name(manifest["run_name"], f"{path}: run name", fix)
    try:
        RunSettings.from_json(manifest["settings"])
        queries_of(manifest)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise QRNError(
            f"{path} holds unreadable settings or queries ({err.__class__.__name__}: {str(err).splitlines()[0]}); {fix}"
        ) from None
    return manifest


def write_shard(folder: Path, rank: int, key: dict, attr: QueryAttribution, settings: QRNCASettings) -> Path:
    """Write one query's sparse attributions (`qrnca.sparsify`) and top activations as rank's shard, atomically."""
    sparse = qrnca.sparsify(attr, settings).rename(columns={"na": "value"}).assign(kind="sparse")
    top = (
        qrnca.top_activations(attr)
        .rename(columns={"activation": "value"})
        .assign(kind="top", in_cluster=False, ig=None)
    )
    meta = {**key, **{k: getattr(attr, k) for k in RESULT}}
    table = pa.Table.from_pandas(pd.concat([sparse, top])[COLUMNS], preserve_index=False)
    path = Path(folder) / f"rank-{rank}" / f"{quote(attr.query_id, safe='')}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(
        path,
        lambda tmp: pq.write_table(table.replace_schema_metadata({META: json.dumps(meta)}), tmp, compression="zstd"),
    )
    return path


def finished_shards(folder: Path) -> dict[str, Path]:
    """query id -> shard of every finished query in the run folder, over all rank folders."""
    return {unquote(p.stem): p for p in sorted(Path(folder).glob("rank-*/*.parquet"))}


def read_shards(folder: Path, manifest: dict, paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, sparse, top) rows of the shards as `store.write_rows` takes them; QRNError for another run's shard."""
    results, rows = [], []
    for path in paths:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[META])
        expected, got = [manifest[k] for k in KEY], [meta[k] for k in KEY]
        if got != expected:
            raise QRNError(
                f"shard {path.relative_to(folder)} was made with {run_diff(expected, got)}; "
                "merge only shards of one run"
            )
        results.append({k: meta[k] for k in RESULT})
        rows.append(table.to_pandas().assign(query_id=meta["query_id"]))
    long = pd.concat(rows, ignore_index=True)
    sparse = long[long["kind"] == "sparse"].rename(columns={"value": "na"})
    top = long[long["kind"] == "top"].rename(columns={"value": "activation"})
    return (
        pd.DataFrame(results),
        sparse[["query_id", "layer", "neuron", "na", "in_cluster", "ig"]],
        top[["query_id", "layer", "neuron", "activation"]],
    )


def merge_into(con: duckdb.DuckDBPyConnection, folder: Path) -> tuple[str, int]:
    """Store the folder's shards of queries not yet stored in one transaction, then finalize; (run id, queries merged).

    The caller holds the store's writer lock. Everything is one transaction, so a refusal (a run name taken, no
    finished shard, another run's shard) leaves the store as it was.
    """
    folder = Path(folder)
    with transaction(con):
        manifest = open_run(con, read_manifest(folder))
        run_id = manifest["run_id"]
        done = store.done_query_ids(con, run_id)
        todo = [path for query_id, path in finished_shards(folder).items() if query_id not in done]
        if not todo and not done:
            raise QRNError(f"{folder} holds no finished query yet; nothing to merge")
        if todo:
            store.write_rows(con, run_id, *read_shards(folder, manifest, todo))
        if todo or store.run_info(con, run_id).status != "finished":
            storing.finalize_run(con, run_id, seed=RunSettings.from_json(manifest["settings"]).prompt.seed)
    return run_id, len(todo)


def merge_shards(folder: str | os.PathLike, db: str | None = None) -> tuple[str, int]:
    """Merge a run folder (e.g. copied from a cluster) into the store at `db`; (run id, queries merged)."""
    store.verify(db)
    read_manifest(Path(folder))  # a refused store or folder is refused before the store is opened for writing
    with store.writer_lock(db, "qrn merge"), store.connect(db) as con:
        return merge_into(con, Path(folder))


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temporary name beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
