"""The Streamlit explorer through streamlit.testing's AppTest: a tiny model and a small seeded store."""

from __future__ import annotations

import dataclasses
import json

import duckdb
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_driver import APP, PAGES, app_on_copy, button, errors, page, typed
from explorer.figures import bin_heatmap, heatmap_figure
from explorer.state import START_MODEL
from markdown_view import shown
from qrcore import store
from qrcore.errors import QRNError
from qrcore.model.spec import ModelSpec
from qrcore.selection.analysis import relative_depth
from qrcore.settings import RunSettings
from qrcore.store.shipped import SHIPPED
from seeded_store import DATASET, DEEP_MODEL, DEEP_RUN, MODEL, QUERIES, RUN, row_counts, seed_store


def test_bin_heatmap_keeps_each_bins_strongest_neuron_with_its_sign():
    matrix = np.array([[0.1, -0.9, 0.3, 0.0, 0.2], [0.5, 0.4, 0.0, -0.6, 0.6]], np.float32)
    binned = bin_heatmap(matrix, max_cols=2)
    np.testing.assert_array_equal(binned.edges, [0, 3, 5])
    np.testing.assert_allclose(binned.values, [[-0.9, 0.2], [0.5, -0.6]])
    np.testing.assert_array_equal(binned.top, [[1, 4], [0, 3]])
    same = bin_heatmap(matrix, max_cols=8)
    np.testing.assert_array_equal(same.values, matrix)
    np.testing.assert_array_equal(same.top, np.tile(np.arange(5), (2, 1)))


def test_wide_heatmap_is_binned_to_at_most_max_cols_and_hovers_the_top_neuron():
    matrix = np.random.default_rng(0).normal(size=(32, 11008)).astype(np.float32)
    binned = bin_heatmap(matrix, 512)
    assert binned.values.shape[1] <= 512 and binned.edges[-1] == 11008
    rows = np.arange(32)[:, None]
    np.testing.assert_array_equal(binned.values, matrix[rows, binned.top])
    np.testing.assert_array_equal(np.abs(binned.values[:, -1]), np.abs(matrix[:, binned.edges[-2] :]).max(axis=1))
    fig = heatmap_figure(binned, 0, "g", labels={(0, int(binned.top[0, 0])): "tokens: a b"})
    assert fig.data[0].customdata[0][0][1] == "tokens: a b"
    assert tuple(fig.layout.yaxis.range) == (-0.5, 31.5)  # the layers only, not the padding of clickable markers
    np.testing.assert_allclose(heatmap_figure(binned, 0, depth_of=32).layout.yaxis.range, [-1 / 62, 1 + 1 / 62])


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_cached_prefix_probabilities_equal_letter_probs(arch, tiny, monkeypatch):
    from explorer import state
    from qrcore.editing.scaling import letter_probs

    query = QUERIES[3]
    lm = state.model(f"tiny-{arch}")
    assert lm.fingerprint == tiny(arch).fingerprint
    prompts = state.prompts(lm.spec.name, query)
    results = []
    for edit in ({}, {(0, 3): 0.0, (2, 40): 2.0, (3, 95): 4.0}):
        results.append(state.option_probs(lm.spec.name, query, tuple((l, n, m) for (l, n), m in edit.items())))
        np.testing.assert_allclose(results[-1], letter_probs(lm, prompts, edit), rtol=1e-4, atol=1e-9)
    assert not np.allclose(results[0], results[1], rtol=1e-3, atol=0)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders(db, name):
    at = page(name)
    assert not at.exception, at.exception
    assert not at.error, errors(at)
    assert at.title[0].value


def test_link_parameters_choose_the_view_and_follow_changes(db):
    at = page("heatmaps", run=RUN, group="science", mode="side by side", layers="1-3")
    assert at.selectbox(key="group").value == "science"
    assert at.slider(key="layers").value == (1, 3)
    assert len(at.get("plotly_chart")) == 2
    at.selectbox(key="group").set_value("geography").run()
    assert at.query_params["group"] == "geography" and at.query_params["run"] == RUN


def test_heatmap_difference_and_bad_link_values_fall_back(db):
    at = page("heatmaps", mode="difference", group="nope", layers="3-99")
    assert not at.exception and not at.error
    assert at.selectbox(key="group").value in ("geography", "science")
    assert at.slider(key="layers").value == (0, 3)


def test_query_lab_slider_changes_probabilities(db):
    at = page("lab", query="geo-1")
    assert len(at.multiselect(key="neurons").value) > 0
    before = [m.value for m in at.metric]
    at.slider(key="mult").set_value(4.0).run()
    after = [m.value for m in at.metric]
    assert not at.exception
    assert after[0] == before[0] and after[1] != before[1]
    assert at.query_params["mult"] == "4"
    button(at, "Reset").click().run()
    assert at.slider(key="mult").value == 1.0 and [m.value for m in at.metric] == before


def test_query_lab_link_restores_neurons_and_multiplier(db):
    at = page("lab", query="sci-2", neurons="0:5,3:95", mult="0")
    assert at.multiselect(key="neurons").value == ["0:5", "3:95"]
    assert at.slider(key="mult").value == 0.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("q_text", "  ", "the question is empty"),
        ("q_options", "Paris\nLondon\nparis", "appears twice"),
        ("q_answer", "Rome", "is not among the options"),
    ],
)
def test_bad_custom_question_shows_the_error_inline(db, field, value, message):
    at = page("lab", source="custom")
    at.text_area(key=field).set_value(value).run() if field == "q_options" else at.text_input(key=field).set_value(
        value
    ).run()
    assert not at.exception
    assert any(message in e for e in errors(at)), errors(at)


def test_custom_question_runs_qrnca_live(db):
    at = page("lab", source="custom")
    button(at, "Run QRNCA").click().run()
    assert not at.exception and not at.error
    assert len(at.multiselect(key="neurons").value) == 10
    button(at, "Generate free-form answers").click().run()
    assert not at.exception and len(at.markdown) >= 2


def test_neuron_out_of_range_shows_the_error_inline(db):
    at = page("lab")
    selected = at.multiselect(key="neurons").value
    at.number_input(key="add_layer").set_value(99)
    button(at, "Add neuron").click().run()
    assert any("layer 99 is out of range" in e for e in errors(at)), errors(at)
    at.number_input(key="add_layer").set_value(2)
    at.number_input(key="add_index").set_value(500)
    button(at, "Add neuron").click().run()
    assert any("neuron 500 is out of range" in e for e in errors(at)), errors(at)
    assert at.multiselect(key="neurons").value == selected
    at.number_input(key="add_index").set_value(17)
    button(at, "Add neuron").click().run()
    assert at.multiselect(key="neurons").value == [*selected, "2:17"]


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("notes.json", b'{"a": 1}', "record 'a': not a JSON object"),
        ("table.csv", b"x,y\n1,2\n", "column 'question' is missing"),
        ("broken.json", b"{not json", "not valid JSON"),
    ],
)
def test_bad_upload_shows_the_error_and_leaves_the_store_unchanged(db, filename, content, message):
    before = row_counts(db)
    at = page("data")
    at.file_uploader(key="upload").set_value((filename, content, "text/plain")).run()
    button(at, "Import").click().run()
    assert not at.exception
    assert any(message in e for e in errors(at)), errors(at)
    assert row_counts(db) == before


def test_upload_stores_the_dataset_and_a_run_on_it_appears_in_the_sidebar(db):
    before = row_counts(db)
    at = page("data")
    csv = b"question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\nWhich is a colour?,red,dog,car,sun,A\n"
    at.file_uploader(key="upload").set_value(("quiz.csv", csv, "text/csv")).run()
    button(at, "Import").click().run()
    assert not at.error, errors(at)
    assert row_counts(db)["datasets"] == before["datasets"] + 1 and row_counts(db)["queries"] == before["queries"] + 2
    at.selectbox(key="run_dataset").set_value("quiz").run()
    at.text_input(key="run_name").set_value("quiz-run")
    button(at, "Start run").click().run()
    assert not at.error and at.success, errors(at)
    assert any(o.startswith("quiz-run ") for o in page("heatmaps").sidebar.selectbox(key="run").options)


def test_first_start_loads_the_shipped_runs_with_progress_and_only_once(tmp_path, monkeypatch):
    db = tmp_path / "fresh.duckdb"
    monkeypatch.setenv("QRN_DB", str(db))
    monkeypatch.delenv("QRN_MODEL", raising=False)
    monkeypatch.setenv("QRN_SHIPPED", "1")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.switch_page("sections/methods.py").run()  # a page that loads no model: the first start is the same on all
    assert not at.exception and not at.error, errors(at)
    assert [s.label for s in at.status] == ["Shipped runs loaded"] and at.progress[0].value == 100
    with store.connect(db, read_only=True) as con:
        assert store.has_runs(con, SHIPPED)
    picker = at.sidebar.selectbox(key="model")
    assert picker.value == START_MODEL == "qwen2.5-coder-1.5b"  # the explorer opens on the model that knows
    assert picker.options == ["qwen2.5-coder-1.5b · 2 run(s)", "smollm2 · 2 run(s)"]  # oldest run first

    def load_again(*args):
        raise AssertionError("the shipped runs were loaded twice")

    monkeypatch.setattr("qrcore.store.shipped.load_shipped_runs", load_again)
    again = AppTest.from_file(str(APP), default_timeout=120)
    again.switch_page("sections/methods.py").run()
    assert not again.exception and not again.status, again.exception


def test_model_picker_lists_both_models_and_the_run_picker_follows(two):
    # AppTest shows app.py's sidebar (the model picker) after the first run only; the browser test checks the link.
    at = AppTest.from_file(str(APP), default_timeout=60).run()  # the heatmaps
    picker = at.sidebar.selectbox(key="model")
    assert picker.value == MODEL and picker.options == [f"{MODEL} · 1 run(s)", f"{DEEP_MODEL} · 1 run(s)"]
    assert at.sidebar.selectbox(key="run").options == [f"{RUN} · {DATASET}"] and at.query_params["model"] == MODEL
    picker.set_value(DEEP_MODEL).run()
    assert at.sidebar.selectbox(key="run").options == [f"{DEEP_RUN} · {DATASET}"]
    assert at.query_params["run"] == DEEP_RUN
    assert at.slider(key="layers").value == (0, 5)  # the deeper model's six layers


def test_app_starts_on_the_model_that_knows_once_it_has_runs_else_on_the_first_with_runs(two, tiny, monkeypatch):
    from explorer.state import START_MODEL
    from qrcore.model import load

    tiny_load = load.load_model

    def not_here(spec: ModelSpec):  # its runs here are a tiny model's: the real one must not load (minutes)
        if spec.name == START_MODEL:
            raise QRNError(f"{spec.name} is not loaded in this test")
        return tiny_load(spec)

    monkeypatch.setattr(load, "load_model", not_here)
    monkeypatch.delenv("QRN_MODEL")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    picker = at.sidebar.selectbox(key="model")
    assert picker.value == MODEL and picker.options[-1] == f"{START_MODEL} · 0 run(s)"
    seed_store(two, tiny("qwen2"), run="known", model=START_MODEL)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert at.sidebar.selectbox(key="model").value == START_MODEL and at.query_params["model"] == START_MODEL
    assert at.sidebar.selectbox(key="run").value == "known"
    assert at.get("plotly_chart")  # its map, drawn before any model is needed


@pytest.mark.parametrize("name", PAGES)
def test_every_page_works_on_the_second_model_of_a_two_model_store(two, name):
    at = page(name, sidebar=True, model=DEEP_MODEL)
    assert not at.exception, at.exception
    assert not at.error, errors(at)
    assert at.query_params["model"] == DEEP_MODEL
    if name not in ("compare", "data"):  # pages that show one run
        assert at.sidebar.selectbox(key="run").value == DEEP_RUN


def figures(at: AppTest) -> list[dict]:
    """The plotly figures on the page, as JSON."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_compare_page_shows_two_models_of_different_depth_side_by_side(two):
    at = page("compare")
    assert not at.exception and not at.error, errors(at)
    assert at.selectbox(key="model_b").value == DEEP_MODEL and at.selectbox(key="dataset").value == DATASET
    assert [h.value for h in at.subheader] == [
        "Accuracy per group",
        "How concentrated the QR neurons are",
        "Heatmaps per group",
        "Overlap between groups",
        "Where the QR neurons sit",
        "PCR and flip rates",
    ]
    heatmaps = [f["data"][0] for f in figures(at) if f["layout"]["yaxis"]["title"]["text"] == "relative depth"]
    assert [typed(h["z"]).shape for h in heatmaps] == [(4, 96), (6, 128)]  # each model on its own grid
    for h, n_layers in zip(heatmaps, (4, 6)):
        np.testing.assert_allclose(typed(h["y"]), relative_depth(n_layers))
    accuracy, summary, pcr, flips = (t.value for t in at.dataframe)
    assert list(accuracy.columns) == [MODEL, DEEP_MODEL] and list(accuracy.index) == ["geography", "science"]
    assert list(summary.columns) == [MODEL, DEEP_MODEL]
    for table in (pcr, flips):
        assert [*dict.fromkeys(m for m, _ in table.columns)] == [MODEL, DEEP_MODEL]
    assert at.query_params["model_b"] == DEEP_MODEL


def test_compare_page_without_a_second_model_says_what_to_run(db):
    at = page("compare")
    assert not at.exception and not at.error
    assert "qrn run --model OTHER --dataset DATASET" in at.info[0].value and DATASET in shown(at.info[0].value)


def test_runs_of_a_model_not_installed_browse_and_only_the_query_lab_says_what_to_install(tmp_path, tiny, monkeypatch):
    path = tmp_path / "gone.duckdb"
    seed_store(path, dataclasses.replace(tiny("llama"), spec=ModelSpec("models/gone.gguf")), run="gone-run")
    app_on_copy(path, tmp_path, monkeypatch)
    at = AppTest.from_file(str(APP), default_timeout=60).run()  # the heatmaps
    assert at.sidebar.selectbox(key="model").value == "models/gone.gguf"
    assert not at.exception and not at.error, errors(at)
    assert len(at.get("plotly_chart")) == 1
    assert any("GGUF file models/gone.gguf does not exist" in c.value for c in at.caption)
    at = page("lab", sidebar=True)
    assert any("GGUF file models/gone.gguf does not exist" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize("name", ["heatmaps", "common"])
def test_maps_and_neuron_tables_are_drawn_before_the_model_loads_and_get_tokens_after(db, monkeypatch, name):
    from explorer import state
    from qrcore.model import load

    def unloadable(spec: ModelSpec):
        raise QRNError(f"{spec.name} cannot load now")

    state._load.clear()
    state._loaded().clear()
    with monkeypatch.context() as m:  # the page must be on screen before a load is tried
        m.setattr(load, "load_model", unloadable)
        at = page(name)
    assert errors(at) == [f"{MODEL} cannot load now"]
    assert len(at.get("plotly_chart")) == (name == "heatmaps") and at.dataframe
    assert all("tokens" not in table.value.columns for table in at.dataframe)
    at = page(name)  # the model loads: the same page, once, with tokens
    assert not at.exception and not at.error, errors(at)
    assert len(at.get("plotly_chart")) == (name == "heatmaps")
    assert all(table.value["tokens"].str.len().gt(0).all() for table in at.dataframe if "neuron" in table.value)


def test_methods_page_shows_the_papers_three_tables_or_the_command_to_make_them(db):
    at = page("methods")
    assert [h.value for h in at.subheader] == [
        "Probability change ratio (Table 4)",
        "Flip rates (Table 6)",
        "Neuron-based answer prediction (Table 7)",
        "Group prediction (ours)",
    ]
    (table,) = [d.value for d in at.dataframe if "prompt-based" in d.value.index]  # Table 7
    assert list(table.index) == ["QRNCA", "Random", "Knowledge Neuron*", "prompt-based", "random guess"]
    with duckdb.connect(str(db)) as con:
        con.execute("DELETE FROM evaluations")
    at = page("methods")
    assert not at.subheader and f"qrn evaluate --run {RUN}" in shown(at.info[0].value)


def test_missing_store_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("QRN_DB", str(tmp_path / "none.duckdb"))
    monkeypatch.setenv("QRN_MODEL", MODEL)
    monkeypatch.setenv("QRN_SHIPPED", "0")
    for name in ("heatmaps", "data"):
        at = page(name)
        assert not at.exception and not at.error
        assert at.info


def test_data_page_shows_each_runs_settings(db):
    runs = page("data").dataframe[0].value
    assert runs["settings"].tolist() == [RunSettings().summary()]
    assert "cluster t=0.2 (template), Z=cluster_sum" in runs["settings"].iloc[0]
