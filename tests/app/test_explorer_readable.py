"""The explorer's stability columns and tables, named methods, columns and languages, colour ranges and file names,
through streamlit.testing's AppTest on the tiny model's seeded store."""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import re

import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from app_driver import errors, page, plot_strings
from explorer.figures import bin_heatmap, color_limit
from qrcore import store
from qrcore.evaluation import run_analyses
from qrcore.runs.stability import SEPARATOR, perturbed_settings, run_stability, stability_table
from qrcore.selection.search import first_token, neurons_for_token, token_scores
from qrcore.settings import RunSettings
from seeded_store import DATASET, MODEL, QUERIES, RUN, seed_store, synthetic_attribution, write_run

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


# Tables and charts that say what they show


@pytest.fixture
def file_names(monkeypatch) -> list[str]:
    """The file names of every download button drawn in the test."""
    names: list[str] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        names.append(filename)
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return names


def labels(frame_element) -> dict[str, str]:
    """The shown name of each column of a drawn table, by its data column."""
    config = json.loads(frame_element.proto.columns)
    return {c: config.get(c, {}).get("label", c) for c in frame_element.value.columns}


def colorbar(at) -> str:
    """The colour bar title of the page's first heatmap."""
    return json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["colorbar"]["title"]["text"]


def test_heatmap_colour_bar_says_where_it_clips(db):
    at = page("heatmaps", group="science")
    assert not at.exception and not at.error, errors(at)
    with store.connect(db, read_only=True) as con:
        binned = bin_heatmap(run_analyses.heatmap(con, RUN, "science"), 256)
    zmax, top = color_limit([binned.values]), float(np.abs(binned.values).max())
    assert top > zmax  # the seeded map has cells beyond the 95th percentile
    assert colorbar(at) == f"NAICA<br>clipped at ±{zmax:.3g}<br>(cells up to {top:.3g})"
    assert any(f"stronger cells, up to {top:.3g}, show the end colour" in c.value for c in at.caption)
    assert any(h.value.startswith("Strongest neurons in view: science") for h in at.subheader)


def test_methods_page_names_the_methods_and_puts_a_huge_bar_on_a_log_axis(db):
    with store.connect(db) as con:
        rows = pd.DataFrame({"group_name": ["science"], "metric": ["pcr"], "value": [290.0]})
        store.write_evaluations(con, store.run_info(con, RUN).run_id, "qrnca_no_ica", "boost", rows)
    at = page("methods")
    assert not at.exception and not at.error, errors(at)
    pcr = at.dataframe[0].value
    assert list(pcr.index) == ["QRNCA", "Random", "Knowledge Neuron*", "QRNCA w/o ICA"]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["yaxis"]["type"] == "log"
    assert {t["name"] for t in spec["data"]} == {"QRNCA", "Random", "Knowledge Neuron*", "QRNCA w/o ICA"}
    assert any(c.value.startswith("Log axis: the largest value, 290") for c in at.caption)
    assert json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["yaxis"]["type"] == "linear"


def test_method_pickers_show_the_papers_names(db):
    at = page("overlap", method="kn")
    assert not at.exception and not at.error, errors(at)
    picker = at.selectbox(key="method")
    assert picker.value == "kn" and "Knowledge Neuron*" in picker.options and "kn" not in picker.options
    assert any("method **Knowledge Neuron\\*" in m.value for m in at.caption)


def test_query_table_has_readable_columns_and_rounded_ig(db):
    at = page("common", query="geo-1")
    assert not at.exception and not at.error, errors(at)
    element = next(d for d in at.dataframe if "reason" in d.value.columns)
    shown = labels(element)
    assert (
        shown["n_clusters"] == "clusters" and shown["naica_rank"] == "NAICA rank" and shown["ig"] == "IG per template"
    )
    assert json.loads(element.proto.columns)["reason"]["width"] == "medium"
    assert all(re.fullmatch(r"-?\d\.\d{3}( / -?\d\.\d{3}){2}", ig) for ig in element.value["ig"])


def test_language_codes_show_as_language_names(db, tiny):
    languages = [replace(q, group="en" if q.group == "science" else "fr") for q in QUERIES]
    seed_store(db, tiny("llama"), languages, run="lang-run", dataset="lang-set")
    at = page("heatmaps", run="lang-run", group="fr")
    assert not at.exception and not at.error, errors(at)
    picker = at.selectbox(key="group")
    assert picker.value == "fr" and picker.options == ["English", "French"]
    overlap = page("overlap", run="lang-run")
    assert {"English", "French"} <= set(plot_strings(overlap)) and "en" not in plot_strings(overlap)
    consistency = page("consistency", run="lang-run")
    table = next(d.value for d in consistency.dataframe if "qr_kept" in d.value.columns)
    assert set(table["group_name"]) == {"English", "French", "all"}


def test_downloads_are_named_by_run_set_and_group(db, file_names):
    page("export", set="group", group="science")
    page("export", set="common", u="0.9")
    page("lab", query="geo-1", neurons="0:5", mult="0")
    assert {"qrn-neurons-tiny-run-group-science.json", "qrn-neurons-tiny-run-group-science.csv"} <= set(file_names)
    assert "qrn-neurons-tiny-run-common-t0.2_u0.9_v20.json" in file_names
    assert f"qrn-edit-{MODEL}-tiny-run-geo-1.json" in file_names


# Search


def test_search_by_token_ranks_the_neurons_that_push_it_up(db, tiny):
    at = page("search", q=" Paris", by="token")
    assert not at.exception and not at.error, errors(at)
    table = at.dataframe[0].value
    token_id, _ = first_token(tiny("llama"), " Paris")
    want = neurons_for_token(tiny("llama"), token_id, 50)
    assert list(zip(table["layer"], table["neuron"])) == list(zip(want["layer"], want["neuron"]))
    np.testing.assert_allclose(table["score"], want["score"], rtol=1e-5)
    scores = token_scores(tiny("llama"), token_id)
    assert table["score"].iloc[0] == pytest.approx(scores.max(), rel=1e-5)
    assert table["card"].iloc[0].endswith(f"&model={MODEL}&run={RUN}")


def test_search_by_question_links_queries_and_their_qr_neurons(db):
    at = page("search", q="capital france", by="question")
    assert not at.exception and not at.error, errors(at)
    queries, neurons = at.dataframe[0].value, at.dataframe[1].value
    assert list(queries["query_id"]) == ["geo-1"]
    assert queries["lab"].iloc[0] == f"lab?source=dataset&query=geo-1&model={MODEL}&run={RUN}"
    with store.connect(db, read_only=True) as con:
        want = store.qr_neurons(con, RUN, "qrnca", "geo-1")
    assert list(zip(neurons["layer"], neurons["neuron"])) == list(zip(want["layer"], want["neuron"]))
    assert page("search", q="capital", by="question", search_group="science").dataframe == []


def test_sidebar_search_box_opens_the_search_page(db):
    at = page("heatmaps", sidebar=True)
    at.sidebar.text_input(key="search_box").input("river").run()
    assert [t.value for t in at.title] == ["Search"] and at.text_input(key="q").value == "river"
