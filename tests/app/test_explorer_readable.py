"""The explorer's stability columns and tables, named methods, columns and languages, colour ranges and file names,
through streamlit.testing's AppTest on the tiny model's seeded store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app_driver import errors, page
from qrcore import store
from qrcore.runs.stability import SEPARATOR, perturbed_settings, run_stability, stability_table
from qrcore.settings import RunSettings
from seeded_store import DATASET, MODEL, QUERIES, RUN, synthetic_attribution, write_run

PERTURBED = f"{RUN}{SEPARATOR}seed1"


@pytest.fixture
def perturbed(db: Path, tiny) -> Path:
    """The seeded store with a finished run named RUN:seed1 of the same model: four queries computed again."""
    lm = tiny("llama")
    config = lm.model.config
    shape = (config.num_hidden_layers, config.intermediate_size)
    rng = np.random.default_rng(1)
    with store.connect(db) as con:
        model_id = store.upsert_model(con, lm.fingerprint, MODEL, config.model_type, *shape, config.to_json_string())
        dataset_id = store.upsert_dataset(con, DATASET, "test", QUERIES)
        attributions = [synthetic_attribution(q, shape, rng) for q in QUERIES[1:5]]
        write_run(con, PERTURBED, model_id, dataset_id, attributions, perturbed_settings(RunSettings())["seed1"])
    return db


def stability(db: Path):
    """What the engine computes: the run's Stability and its table per perturbation and group."""
    with store.connect(db, read_only=True) as con:
        info = store.run_info(con, RUN)
        return run_stability(con, info), stability_table(con, info)


def shown_stability(neurons: pd.DataFrame) -> list[str]:
    """The engine's stays/of per neuron row, as the tables show it."""
    return [f"{s}/{o}" for s, o in zip(neurons["stays"], neurons["of"])]


def test_query_lab_shows_each_qr_neurons_stability(perturbed):
    at = page("lab", query="geo-1", run=RUN)
    assert not at.exception and not at.error, errors(at)
    table = next(d.value for d in at.dataframe if "stability" in d.value.columns)
    want = stability(perturbed)[0].neurons
    want = want.loc[want["query_id"] == "geo-1"].sort_values("rank")
    assert list(table["layer"]) == list(want["layer"]) and list(table["neuron"]) == list(want["neuron"])
    assert list(table["stability"]) == shown_stability(want)
    assert set(want["of"]) == {4}  # three templates left out, and the perturbed run, which holds geo-1


def test_query_without_a_perturbed_run_counts_the_templates_only(perturbed):
    at = page("common", query="sci-1", run=RUN)
    assert not at.exception and not at.error, errors(at)
    table = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    want = stability(perturbed)[0].neurons
    want = want.loc[want["query_id"] == "sci-1"]
    kept = table.loc[table["kept"]]
    by_neuron = dict(zip(zip(want["layer"], want["neuron"]), shown_stability(want)))
    assert list(kept["stability"]) == [by_neuron[(l, n)] for l, n in zip(kept["layer"], kept["neuron"])]
    assert set(want["of"]) == {3} and set(table.loc[~table["kept"], "stability"]) == {""}


def test_neuron_card_shows_its_mean_stability_and_per_query(perturbed):
    neurons = stability(perturbed)[0].neurons
    layer, index = neurons.groupby(["layer", "neuron"]).size().idxmax()  # the QR neuron of the most queries
    mine = neurons.loc[(neurons["layer"] == layer) & (neurons["neuron"] == index)].set_index("query_id")
    at = page("neuron", neuron=f"{layer}:{index}", run=RUN)
    assert not at.exception and not at.error, errors(at)
    assert next(m.value for m in at.metric if m.label == "Stability") == f"{mine['stability'].mean():.0%}"
    table = next(d.value for d in at.dataframe if "qr_rank" in d.value.columns)
    qr = table.loc[table["qr_rank"] > 0]
    assert list(qr["stability"]) == [f"{mine.at[q, 'stays']}/{mine.at[q, 'of']}" for q in qr["query_id"]]
    assert set(table.loc[table["qr_rank"] == 0, "stability"]) <= {""}


def test_consistency_page_shows_the_stability_per_perturbation_and_group(perturbed):
    at = page("consistency", run=RUN)
    assert not at.exception and not at.error, errors(at)
    table = next(d.value for d in at.dataframe if "qr_kept" in d.value.columns)
    want = stability(perturbed)[1]
    pd.testing.assert_frame_equal(table.reset_index(drop=True), want)
    assert {"seed1", "without template 1", "without template 3"} <= set(table["perturbation"])
    assert any("Jaccard index of the queries' clusters and QR neurons" in c.value for c in at.caption)
