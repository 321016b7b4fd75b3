"""The shipped default runs load into a store, and recomputing a sample of their queries gives the shipped numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qrcore import store
from qrcore.evaluation import run_analyses
from qrcore.store.shipped import SHIPPED, load_shipped_runs


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A fresh store with the shipped runs loaded."""
    db = str(tmp_path_factory.mktemp("seed") / "qrn.duckdb")
    assert load_shipped_runs(db) is True
    assert load_shipped_runs(db) is False  # second start: nothing loaded twice
    return db


SHAPES = {"qwen2.5-coder-1.5b": (28, 8960), "smollm2": (30, 1536)}
"""(layers, FFN neurons) of each shipped model."""


def test_shipped_runs_cover_whole_builtin_datasets(seeded):
    with store.connect(seeded, read_only=True) as con:
        runs = store.list_runs(con).set_index("name")
        assert set(runs.index) == {"domain-qwen2", "domain-smollm2", "language-qwen2", "language-smollm2"}
        assert set(runs["status"]) == {"finished"}
        for name in runs.index:
            info = store.run_info(con, name)
            assert (info.n_layers, info.n_neurons) == SHAPES[runs.loc[name, "model"]]
            groups = store.heatmap_groups(con, info.run_id)
            assert len(groups) == 6 and all(run_analyses.heatmap(con, info.run_id, g).any() for g in groups)
        ids = {n: store.run_info(con, n).run_id for n in runs.index}
        assert all(not store.evaluations(con, ids[n]).empty for n in runs.index)
        for dataset in ("domain", "language"):  # both models on the same questions: the compare page's pairs
            names = (f"{dataset}-qwen2", f"{dataset}-smollm2")
            dataset_ids = {store.run_dataset_id(con, ids[n]) for n in names}
            assert len(dataset_ids) == 1
            queries = store.load_queries(con, dataset_ids.pop())
            assert len(queries) == 330  # the whole built-in set, not a per-group sample
            assert all(store.done_query_ids(con, ids[n]) == {q.id for q in queries} for n in names)


def shipped_runs() -> list[tuple[str, str]]:
    """(run name, model name) of every shipped run, the model name as `--model` takes it."""
    runs = pd.read_parquet(SHIPPED / "runs.parquet")
    models = pd.read_parquet(SHIPPED / "models.parquet").rename(columns={"name": "model"})
    return list(runs.merge(models, on="model_id")[["name", "model"]].itertuples(index=False, name=None))


@pytest.mark.slow
@pytest.mark.parametrize(("run", "model"), shipped_runs())
def test_recomputed_sample_matches_shipped_attributions(seeded, run, model):
    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.model.load import load_model
    from qrcore.model.spec import ModelSpec
    from qrcore.selection.qrnca import query_na

    lm = load_model(ModelSpec(name=model))  # loaded per run, freed after it: Qwen alone takes 8 GiB
    with store.connect(seeded, read_only=True) as con:
        info = store.run_info(con, run)
        assert lm.fingerprint == info.model_id
        queries = {q.id: q for q in store.load_queries(con, store.run_dataset_id(con, info.run_id))}
        qid = sorted(store.done_query_ids(con, info.run_id))[0]
        shipped = run_analyses.query_neurons(con, info.run_id, qid)
    fresh = NeuronAttribution(lm, info.settings.attribution, info.settings.prompt).attribute(queries[qid])
    na = query_na(fresh.ig, info.settings.qrnca).na  # (layers, neurons)
    recomputed = na[shipped["layer"].to_numpy(), shipped["neuron"].to_numpy()]
    assert np.allclose(recomputed, shipped["na"].to_numpy(), atol=1e-4)
