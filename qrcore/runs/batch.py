"""Batch runs (`qrn run`): attribute every query of a dataset into the store, resumably, then finalize QRNCA.

Each finished query is written in its own transaction, so a killed run loses at most the query in flight
and a rerun skips what is stored. A run with the same model, data and settings is a cache hit.
"""

from __future__ import annotations

from pathlib import Path

from qrcore import store
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.model.spec import LoadedModel
from qrcore.names import check_name, safe_name
from qrcore.progress import Progress
from qrcore.runs import storing
from qrcore.settings import RunSettings


def resolve_dataset(dataset: str, db: str | None = None) -> tuple[str, str, list[Query]]:
    """(name, source, queries) of a built-in set, a dataset file, or a dataset already in the store."""
    from qrcore.data.datasets import BUILTIN, import_file, load_builtin

    if dataset in BUILTIN:
        return dataset, "builtin", load_builtin(dataset)
    path = Path(dataset)
    if path.suffix.lower() in (".json", ".csv") or (path.suffix and path.exists()):
        return path.stem, str(path), import_file(path)
    if Path(db or store.default_db()).exists():
        with store.connect(db, read_only=True) as con:
            try:
                return dataset, "store", store.load_queries(con, dataset)
            except QRNError:
                pass
    raise QRNError(
        f"unknown dataset {dataset!r}; use one of {', '.join(BUILTIN)}, a .json/.csv file, "
        "or a dataset imported with `qrn import`."
    )


def select_queries(queries: list[Query], groups: list[str] | None, per_group: int | None) -> list[Query]:
    """The queries of the chosen groups, at most per_group of each, in dataset order."""
    known = {q.group for q in queries}
    unknown = sorted(set(groups or []) - known)
    if unknown:
        raise QRNError(f"unknown group(s) {', '.join(unknown)}; this dataset has {', '.join(sorted(known))}.")
    counts: dict[str, int] = {}
    out = []
    for q in queries:
        if groups and q.group not in groups:
            continue
        counts[q.group] = counts.get(q.group, 0) + 1
        if per_group is None or counts[q.group] <= per_group:
            out.append(q)
    if not out:
        raise QRNError("the dataset is empty; nothing to run.")
    return out


def plan_queries(
    dataset: str,
    db: str | None = None,
    settings: RunSettings = RunSettings(),
    groups: list[str] | None = None,
    per_group: int | None = None,
) -> tuple[str, str, list[Query]]:
    """(dataset name with the selection, source, queries) of a run: the selected queries with distractors filled in.

    Bad settings, a refused store and queries that cannot be asked fail here, before a model is loaded.
    """
    from qrcore.data.prompts import check_templates, fill_distractors

    check_templates(settings.prompt)
    store.verify(db)
    ds_name, source, queries = resolve_dataset(dataset, db)
    for q in queries:
        q.validate()  # datasets stored before a check was added
    queries = select_queries(fill_distractors(queries, seed=settings.prompt.seed), groups, per_group)
    if groups or per_group:
        ds_name = f"{ds_name}[{','.join(groups or [])}:{per_group or 'all'}]"
    return ds_name, source, queries


def run_name(name: str | None, ds_name: str, lm: LoadedModel) -> str:
    """The run's name: the one given (QRNError unless it follows `qrcore.names`), else DATASET@MODEL made a valid
    name (a model path's '/' become '_')."""
    return check_name(name, "run name") if name is not None else safe_name(f"{ds_name}@{lm.spec.name}")


def check_prompts(lm: LoadedModel, queries: list[Query], settings: RunSettings) -> None:
    """Build every query's prompts for the model (tokenizing only, no forward), so that one the model cannot take (over
    its context) fails before the store is written."""
    from qrcore.attribution.ig import NeuronAttribution

    attr = NeuronAttribution(lm, settings.attribution, settings.prompt)
    for q in queries:
        attr.prompts(q)


def run_dataset(
    lm: LoadedModel,
    dataset: str,
    db: str | None = None,
    name: str | None = None,
    settings: RunSettings = RunSettings(),
    groups: list[str] | None = None,
    per_group: int | None = None,
    progress: Progress | None = None,
) -> str:
    """Attribute the dataset's (selected) queries not yet stored, then finalize; returns the run id."""
    from qrcore.attribution.ig import NeuronAttribution

    ds_name, source, queries = plan_queries(dataset, db, settings, groups, per_group)
    check_prompts(lm, queries, settings)
    with store.writer_lock(db):
        with store.connect(db) as con:
            run_id = store.store_run(
                con, lm.store_row(), (ds_name, source, queries), run_name(name, ds_name, lm), settings
            )
            done = store.done_query_ids(con, run_id)
            finished = store.run_info(con, run_id).status == "finished"
        todo = [q for q in queries if q.id not in done]
        if not todo and finished:
            return run_id  # cache hit: no model forward
        attr = NeuronAttribution(lm, settings.attribution, settings.prompt, stems_for=queries)
        for i, q in enumerate(todo, 1):
            result = attr.attribute(q)
            with store.connect(db) as con:
                storing.write_query(con, run_id, result, settings.qrnca)
            if progress:
                progress(len(done) + i, len(queries), q.id)
        with store.connect(db) as con:
            storing.finalize_run(con, run_id, seed=settings.prompt.seed)
    return run_id
