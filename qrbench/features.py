"""`qrn bench features`: the speed targets of the explorer's neuron card, live thresholds and custom-question QRNCA.

Measured on the shipped default runs (loaded into a temporary store) and on a synthetic run of the default model's
shape (30 x 1536 neurons, three templates' IG per stored row, as `qrn run` stores it now), without a model: every
timed step reads the store or scores arrays. Targets: card under 1 s, threshold change under 1 s, custom-question
scoring under 0.5 s on top of its attribution; the Search page's answer under 1 s on the shipped runs
(`explorer.bench_search`, with their models).
"""

from __future__ import annotations

import os
from pathlib import Path
import tempfile

import numpy as np
import pandas as pd

from qrbench.store import median_ms
from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.evaluation import run_analyses
from qrcore.runs import storing
from qrcore.selection import qrnca
from qrcore.selection.custom import score_against_run
from qrcore.settings import RunSettings
from qrcore.store.shipped import SHIPPED

SHAPE = (30, 1536)
"""The default model's layers x neurons."""
SYNTHETIC_RUN = "synthetic-templates"
THRESHOLDS = [(0.3, 0.3, 20), (0.15, 0.5, 10), (0.5, 0.2, 40), (0.25, 0.4, 20)]
"""Settings visited in turn: each one is a threshold change that no cache has seen."""


def synthetic_attribution(query_id: str, rng: np.random.Generator, templates: int = 3) -> QueryAttribution:
    """IG of the default model's shape: noise, 150 neurons shared by the templates in part, 40 of each template's own."""
    n = SHAPE[0] * SHAPE[1]
    ig = rng.normal(0.0, 0.01, (templates, n))  # (templates, neurons)
    shared = rng.choice(n, 150, replace=False)
    ig[:, shared] += rng.uniform(0.05, 1.0, 150) * rng.uniform(0.5, 1.5, (templates, 1))
    for p in range(templates):
        ig[p, rng.choice(n, 40, replace=False)] += rng.uniform(0.05, 0.8, 40)
    return QueryAttribution(
        query_id,
        ig.reshape(templates, *SHAPE).astype(np.float32),
        rng.uniform(0, 2, SHAPE).astype(np.float32),
        0.3,
        1.0,
    )


def build_template_store(path: str | os.PathLike, n_queries: int = 660, groups: int = 6, seed: int = 0) -> None:
    """A store with one finished synthetic run of the default model's shape, its rows with three templates' IG."""
    rng = np.random.default_rng(seed)
    settings = RunSettings()
    attrs = [synthetic_attribution(f"q{i:04d}", rng) for i in range(n_queries)]
    queries = [
        Query(
            id=a.query_id,
            group=f"group{i % groups}",
            question=f"synthetic question {i}?",
            answer="yes",
            distractors=("no", "maybe", "unknown"),
        )
        for i, a in enumerate(attrs)
    ]
    results = pd.DataFrame(
        {"query_id": [a.query_id for a in attrs], "correct_prob": 0.3, "accuracy": 1.0, "seconds": 1.0}
    )
    with store.connect(path) as con:
        model_id = store.upsert_model(con, "synthetic-30x1536", "synthetic", "none", *SHAPE, "{}")
        dataset_id = store.upsert_dataset(con, SYNTHETIC_RUN, "bench_features", queries)
        run_id = store.get_or_create_run(con, SYNTHETIC_RUN, model_id, dataset_id, settings)
        store.write_rows(
            con,
            run_id,
            results,
            pd.concat([qrnca.sparsify(a, settings.qrnca) for a in attrs]),
            pd.concat([qrnca.top_activations(a) for a in attrs]),
        )
        storing.finalize_run(con, run_id, seed=seed)


def bench_run(path: str | os.PathLike, run: str, repeats: int) -> dict[str, float]:
    """Milliseconds of the card, a threshold change, template consistency and custom scoring on one stored run."""

    def read(reader, *args):
        with store.connect(path, read_only=True) as con:
            return reader(con, *args)

    info = read(store.run_info, run)
    stats = read(run_analyses.common_neurons, run)
    neuron = (int(stats["layer"].iloc[0]), int(stats["neuron"].iloc[0])) if len(stats) else (0, 0)
    visits = iter(THRESHOLDS * (repeats + 1))
    rows, _ = read(store.stored_rows, run)
    counts, n_clusters = read(store.cluster_counts, run)
    custom = synthetic_attribution("custom", np.random.default_rng(1))
    out = {
        "rows": len(rows),
        "queries": info.n_clusters,
        "card_ms": median_ms(lambda: read(run_analyses.neuron_card, run, *neuron), repeats),
        "thresholds_ms": median_ms(lambda: read(run_analyses.qrnca_at, run, *next(visits)), repeats),
        "custom_ms": median_ms(lambda: score_against_run(custom, counts, n_clusters, info.settings.qrnca), repeats),
        "custom_with_counts_ms": median_ms(
            lambda: score_against_run(custom, *read(store.cluster_counts, run), info.settings.qrnca), repeats
        ),
    }
    if read(store.has_template_ig, run):
        out["consistency_ms"] = median_ms(lambda: read(run_analyses.template_consistency, run), repeats)
    return out


def bench_features(repeats: int = 7) -> pd.DataFrame:
    """The table of `bench_run` on the shipped runs and a synthetic template-IG run, printed and returned."""
    with tempfile.TemporaryDirectory() as tmp:
        shipped, synthetic = Path(tmp) / "shipped.duckdb", Path(tmp) / "templates.duckdb"
        with store.connect(shipped) as con:
            store.import_runs(con, SHIPPED)
            runs = store.list_runs(con)["name"].tolist()
        build_template_store(synthetic)
        rows = [{"run": run, **bench_run(shipped, run, repeats)} for run in runs]
        rows.append({"run": f"{SYNTHETIC_RUN} (660 queries)", **bench_run(synthetic, SYNTHETIC_RUN, repeats)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    from explorer.bench_search import bench_search

    print("\nThe Search page's answer, the whole page re-run after a new search (ms; target under 1 s):")
    print(bench_search(min(repeats, 5)).to_string(index=False, float_format=lambda v: f"{v:.0f}"))
    return table
