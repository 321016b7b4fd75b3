"""Small stores for the tests: a tiny model, two groups, synthetic attributions and evaluations; hostile user text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.model.spec import LoadedModel
from qrcore.runs import storing
from qrcore.settings import RunSettings
from qrcore.store import connection

MODEL = "tiny-llama"
RUN = "tiny-run"
DEEP_MODEL = "tiny-gemma3"
"""A second model, deeper and wider than MODEL (6 x 128 against 4 x 96), for stores of two models."""
DEEP_RUN = "tiny-deep-run"
DATASET = "tiny-set"
QUERIES = [
    Query(
        id="sci-1",
        group="science",
        question="What gas do plants absorb?",
        answer="Carbon dioxide",
        distractors=("Oxygen", "Nitrogen", "Helium"),
    ),
    Query(
        id="sci-2",
        group="science",
        question="What is the boiling point of water at sea level?",
        answer="100 C",
        distractors=("50 C", "80 C", "120 C"),
    ),
    Query(
        id="sci-3",
        group="science",
        question="Which planet is closest to the Sun?",
        answer="Mercury",
        distractors=("Venus", "Earth", "Mars"),
    ),
    Query(
        id="geo-1",
        group="geography",
        question="What is the capital of France?",
        answer="Paris",
        distractors=("London", "Berlin", "Madrid"),
    ),
    Query(
        id="geo-2",
        group="geography",
        question="Which river flows through Cairo?",
        answer="Nile",
        distractors=("Amazon", "Danube", "Thames"),
    ),
    Query(
        id="geo-3",
        group="geography",
        question="What is the largest ocean?",
        answer="Pacific",
        distractors=("Atlantic", "Indian", "Arctic"),
    ),
]


def synthetic_attribution(
    query: Query, shape: tuple[int, int], rng: np.random.Generator, templates: int = 3
) -> QueryAttribution:
    """Templates' IG: a few strong neurons shared within the query's group, a couple shared by all, one neuron of each
    template's own, and noise, so the templates agree only in part."""
    base = rng.normal(0.0, 0.05, shape)  # (layers, neurons)
    band = 0 if query.group == "science" else 2
    for layer, neuron in zip(band + rng.integers(0, 2, 8), rng.integers(0, 24, 8)):
        base[layer, neuron] += rng.uniform(0.4, 1.0)
    base[1, 50] += 0.6  # common to every query
    base[3, 7] += 0.5
    ig = base * rng.uniform(0.6, 1.4, (templates, 1, 1)) + rng.normal(0.0, 0.03, (templates, *shape))
    for p in range(templates):
        ig[p, rng.integers(0, shape[0]), rng.integers(60, shape[1])] += rng.uniform(0.5, 0.9)
    ig /= np.abs(ig).max()
    return QueryAttribution(
        query.id, ig.astype(np.float32), rng.uniform(0.0, 2.0, shape).astype(np.float32), 0.3, 1.0, 0.1
    )


def write_run(
    con,
    name: str,
    model_id: str,
    dataset_id: str,
    attributions: list[QueryAttribution],
    settings: RunSettings = RunSettings(),
    finish: bool = True,
) -> str:
    """A run of the given attributions under `settings` (stored model and dataset), finished unless `finish` is
    False (as a killed run leaves it); returns its id."""
    run_id = store.get_or_create_run(con, name, model_id, dataset_id, settings)
    for attr in attributions:
        storing.write_query(con, run_id, attr, settings.qrnca)
    if finish:
        storing.finalize_run(con, run_id)
    return run_id


def seed_store(
    path: Path,
    lm: LoadedModel,
    queries: list[Query] = QUERIES,
    run: str = RUN,
    dataset: str = DATASET,
    done: int | None = None,
    model: str | None = None,
) -> str:
    """A finished run of `lm` (stored under its own name, or `model`) on `queries` with evaluations, written through
    qrcore.store; returns the run id.

    With `done`, only the first `done` queries are stored and the run is left unfinished, as a killed run leaves it.
    """
    rng = np.random.default_rng(0)
    config = lm.model.config
    shape = (config.num_hidden_layers, config.intermediate_size)
    with store.connect(path) as con:
        model_id = store.upsert_model(
            con, lm.fingerprint, model or lm.spec.name, config.model_type, *shape, config.to_json_string()
        )
        dataset_id = store.upsert_dataset(con, dataset, "test", queries)
        attributions = [synthetic_attribution(q, shape, rng) for q in queries[:done]]
        run_id = write_run(con, run, model_id, dataset_id, attributions, finish=done is None)
        if done is not None:
            return run_id
        groups = sorted({q.group for q in queries})
        for method in ("qrnca", "kn", "random"):
            for evaluation, rows in synthetic_evaluations(rng, groups).items():
                store.write_evaluations(con, run_id, method, evaluation, rows)
    return run_id


def synthetic_evaluations(rng: np.random.Generator, groups: list[str]) -> dict[str, pd.DataFrame]:
    """One method's numbers in the shape `qrcore.evaluation.evaluate` stores: PCR and changes, flip rates, prediction."""
    out = {}
    for evaluation in ("boost", "suppress"):
        rows = [
            (g, m, rng.uniform(1.0, 5.0))
            for g in [*groups, "all"]
            for m in ("pcr", "related_change", "unrelated_change")
        ]
        rows += [("all", m, rng.uniform(0.0, 0.5)) for m in ("correct_to_incorrect", "incorrect_to_correct")]
        out[evaluation] = pd.DataFrame(rows, columns=["group_name", "metric", "value"])
    out["answer_prediction"] = pd.DataFrame(
        [(g, m, rng.uniform(0.25, 1)) for g in [*groups, "all"] for m in ("accuracy", "prompt_accuracy", "chance")],
        columns=["group_name", "metric", "value"],
    )
    out["group_prediction"] = pd.DataFrame(
        {"group_name": ["all"], "metric": ["accuracy"], "value": [rng.uniform(0.3, 1)]}
    )
    return out


def row_counts(path: Path) -> dict[str, int]:
    """Rows per table of the store, to check that a failed action changed nothing."""
    with store.connect(path, read_only=True) as con:
        tables = [r[0] for r in con.execute(connection.LIST_TABLES).fetchall()]
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


URL = "http://127.0.0.1:9"
HOSTILE = (
    f'![x]({URL}/x.png) [c]({URL}/c) <a href="{URL}/a">a</a> <img src="{URL}/i.png"> www.example.com me@example.com'
)
"""Markdown image and link syntax, HTML tags and addresses GitHub Markdown links by itself."""


def hostile(query: Query) -> Query:
    """`query` with HOSTILE in its id, group, question and answer, and an HTML link around every distractor."""
    return Query(
        id=f"{query.id} {HOSTILE}",
        group=f"{query.group} {HOSTILE}",
        question=f"{query.question} {HOSTILE}",
        answer=f"{query.answer} {HOSTILE}",
        distractors=tuple(f'<a href="{URL}/{i}">{d}</a>' for i, d in enumerate(query.distractors)),
    )
