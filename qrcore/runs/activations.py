"""`qrn activations`: every neuron's top queries of a run (`qrcore.selection.activations`) computed into the store,
resumable: the rows are rewritten every few queries with the queries they cover, and a second call goes on from them."""

from __future__ import annotations

from dataclasses import dataclass
import os
from typing import TYPE_CHECKING

import pandas as pd

from qrcore import store
from qrcore.data.queries import Query
from qrcore.progress import Progress
from qrcore.selection.activations import TOP_QUERIES, TopQueries, answer_activations

if TYPE_CHECKING:
    from qrcore.model.spec import LoadedModel

EVERY = 16
"""Queries computed between two writes of the rows (what a killed computation loses at most)."""


@dataclass(frozen=True)
class ActivationPlan:
    """A run's top-query computation: what is stored and what is left."""

    info: store.RunInfo
    rows: pd.DataFrame
    """The stored top-query rows (layer, neuron, query_id, activation)."""
    done: list[str]
    """The queries the stored rows cover."""
    todo: list[Query]
    """The run's queries still to add, in the dataset's order."""


def plan_activations(run: str, db: str | os.PathLike | None = None) -> ActivationPlan:
    """What `store_activations` would do for `run`, read before any model loads (an unknown run is one line)."""
    with store.connect(db, read_only=True) as con:
        info = store.run_info(con, run)
        stored = store.done_query_ids(con, info.run_id)
        queries = [q for q in store.load_queries(con, store.run_dataset_id(con, info.run_id)) if q.id in stored]
        rows, done = store.read_top_queries(con, info.run_id)
    covered = set(done)
    return ActivationPlan(info, rows, done, [q for q in queries if q.id not in covered])


def store_activations(
    lm: LoadedModel,
    run: str,
    db: str | os.PathLike | None = None,
    progress: Progress | None = None,
    every: int = EVERY,
) -> ActivationPlan:
    """Add the run's remaining queries to every neuron's top queries, one forward per prompt, writing the rows every
    `every` queries under the store's writer lock; the plan it started from."""
    with store.writer_lock(db, "qrn activations"):
        plan = plan_activations(run, db)
        store.require_model(plan.info, lm.spec.name, lm.fingerprint)
        shape = (plan.info.n_layers, plan.info.n_neurons)
        top = TopQueries.from_rows(plan.rows, plan.done, shape, TOP_QUERIES)
        total = len(plan.done) + len(plan.todo)

        if progress:
            progress(len(plan.done), total, "stored")
        for i, (query, activation) in enumerate(zip(plan.todo, answer_activations(lm, plan.todo, plan.info.settings))):
            top.add(query.id, activation)
            if (i + 1) % every == 0 or i + 1 == len(plan.todo):
                with store.connect(db) as con:
                    store.write_top_queries(con, plan.info.run_id, top.rows(), top.query_ids)
            if progress:
                progress(len(plan.done) + i + 1, total, query.id)
        return plan
