"""The explorer's neuron cards, live thresholds, template consistency, custom-question QRNCA, per-neuron sliders and
take-away files, through streamlit.testing's AppTest on the tiny model's seeded store."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from app_driver import button, errors, page, plot_strings
from markdown_view import shown
from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.editing import edits
from qrcore.editing.edits import load_edit
from qrcore.editing.readable import renormalise
from qrcore.editing.scaling import letter_probs
from qrcore.evaluation import run_analyses
from qrcore.selection.contrast import Pair
from qrcore.selection.custom import score_against_run
from seeded_store import DEEP_MODEL, DEEP_RUN, MODEL, QUERIES, RUN, row_counts


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """The bytes behind every download button drawn in the test, by the file id in the button's url."""
    saved: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        saved[file_id] = path_or_data if isinstance(path_or_data, bytes) else str(path_or_data).encode()
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return saved


def download(at, downloads: dict[str, bytes], label: str) -> str:
    """The text of the download button labelled `label`."""
    proto = next(b.proto for b in at.get("download_button") if b.proto.label == label)
    return downloads[Path(proto.url).stem].decode()


def metric(at, label_start: str) -> str:
    """The value of the metric whose label starts with `label_start`."""
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def live(db: Path, t: float, u: float, v: int):
    """What the engine computes at these thresholds."""
    with store.connect(db, read_only=True) as con:
        return run_analyses.qrnca_at(con, RUN, t, u, v)


# Neuron card


def test_neuron_card_shows_the_neuron_of_the_link(db):
    at = page("neuron", neuron="1:50")
    assert not at.exception and not at.error, errors(at)
    with store.connect(db, read_only=True) as con:
        card = run_analyses.neuron_card(con, RUN, 1, 50)
    assert metric(at, "Cluster frequency") == f"{card.frequency:.0%}" == "100%"
    assert metric(at, "Common neuron") == "yes"
    tables = [d.value for d in at.dataframe]
    assert sorted(tables[1]["query_id"]) == sorted(q.id for q in QUERIES)  # every cluster holds it
    assert list(tables[0].columns) == ["pushes up", "pushes down"] and len(tables[0]) == 10
    assert at.query_params["neuron"] == "1:50" and at.query_params["run"] == RUN


@pytest.mark.parametrize(
    ("neuron", "message"),
    [
        ("4:0", "neuron 4:0 is outside this run's model (layers 0-3, neurons 0-95); pick a layer and index in range."),
        ("2:96", "neuron 2:96 is outside this run's model"),
        ("twelve", "The neuron is not written as layer:index; use whole numbers, e.g. 12:345."),
    ],
)
def test_neuron_outside_the_model_gets_one_line(db, neuron, message):
    before = row_counts(db)
    at = page("neuron", neuron=neuron)
    assert not at.exception and len(at.error) == 1 and errors(at)[0].startswith(message), errors(at)
    assert row_counts(db) == before


def test_neuron_card_computes_activations_on_demand(db, tiny):
    at = page("neuron", neuron="2:5")
    assert len(at.get("plotly_chart")) == 1
    button(at, "Compute its activation on all 6 queries").click().run()
    assert not at.exception and len(at.get("plotly_chart")) == 2
    traces = json.loads(at.get("plotly_chart")[1].proto.spec)["data"]  # y as plotly's typed arrays
    shown = np.concatenate([np.frombuffer(base64.b64decode(t["y"]["bdata"]), t["y"]["dtype"]) for t in traces])
    from qrcore.selection.activations import answer_activations
    from qrcore.settings import RunSettings

    want = np.stack(list(answer_activations(tiny("llama"), QUERIES, RunSettings())))[:, 2, 5]
    np.testing.assert_allclose(np.sort(shown), np.sort(want), rtol=1e-5)


def test_neuron_card_button_takes_the_neuron_alone_into_the_query_lab(db):
    at = page("neuron", neuron="2:17")
    button(at, "Edit it in the lab").click().run()
    assert not at.exception, at.exception
    assert at.multiselect(key="neurons").value == ["2:17"]


def test_tables_link_to_neuron_cards(db):
    at = page("common")
    links = at.dataframe[0].value["card"]
    assert links.iloc[0].startswith(f"neuron?neuron={at.dataframe[0].value['layer'].iloc[0]}%3A")
    assert links.str.endswith(f"&model={MODEL}&run={RUN}").all()


# Live thresholds


def test_live_thresholds_recompute_common_neurons_and_change_nothing_stored(db):
    before = row_counts(db)
    at = page("common", t="0.45")
    assert not at.exception and not at.error, errors(at)
    want = live(db, 0.45, 0.3, 20)
    assert metric(at, "Common neurons") == str(len(want.common))
    assert (
        at.dataframe[0].value[["layer", "neuron"]].values.tolist() == want.common[["layer", "neuron"]].values.tolist()
    )
    at.slider(key="u").set_value(0.9).run()
    assert metric(at, "Common neurons") == str(len(live(db, 0.45, 0.9, 20).common))
    assert at.query_params["u"] == "0.9" and at.query_params["t"] == "0.45"
    button(at, "Back to the run's thresholds").click().run()
    assert (at.slider(key="t").value, at.slider(key="u").value) == (0.2, 0.3)
    assert row_counts(db) == before


def test_heatmap_follows_the_live_threshold(db):
    stored = page("heatmaps", group="science").get("plotly_chart")[0].proto.spec
    at = page("heatmaps", group="science", t="0.6", v="3")
    assert not at.exception and not at.error, errors(at)
    assert at.get("plotly_chart")[0].proto.spec != stored


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"t": "0.01"}, "?t=0.01 in the link is not a t from 0.05 to 0.99"),
        ({"u": "2"}, "?u=2 in the link is not a u from 0.01 to 1"),
        ({"v": "abc"}, "?v=abc in the link is not a whole v from 1 to 1000"),
        ({"v": "0"}, "?v=0 in the link is not a whole v from 1 to 1000"),
    ],
)
def test_thresholds_out_of_range_in_the_link_get_one_line(db, params, message):
    before = row_counts(db)
    at = page("common", **params)
    assert not at.exception and not at.error and len(at.warning) == 1, errors(at)
    assert shown(at.warning[0].value).startswith(message), at.warning[0].value
    assert (at.slider(key="t").value, at.slider(key="u").value, at.number_input(key="v").value) == (0.2, 0.3, 20)
    assert row_counts(db) == before


# Template consistency


def test_template_consistency_page_per_group_and_per_query(db):
    at = page("consistency", query="geo-2")
    assert not at.exception and not at.error, errors(at)
    with store.connect(db, read_only=True) as con:
        want = run_analyses.template_consistency(con, RUN).set_index("query_id")
    table = next(d.value for d in at.dataframe if "agreement" in d.value.columns and "question" in d.value.columns)
    np.testing.assert_allclose(table.set_index("query_id")["agreement"], want.loc[table["query_id"], "agreement"])
    assert 0 < want["agreement"].mean() < 1
    templates = at.dataframe[-1].value
    assert [c for c in templates.columns if c.startswith("template")] == ["template 1", "template 2", "template 3"]
    assert len(templates) == want.loc["geo-2", "cluster"]
    higher = page("consistency", t="0.5")
    assert (
        next(d.value for d in higher.dataframe if "question" in d.value.columns)["cluster"].sum()
        < want["cluster"].sum()
    )


def test_template_consistency_says_when_a_run_has_no_template_ig(db):
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE attributions SET ig = NULL")
    at = page("consistency")
    assert not at.exception and not at.error
    assert "not available for this run" in at.info[0].value
    lab = page("lab", query="geo-1")
    assert any("Template consistency is not available" in c.value for c in lab.caption)
    common = page("common", t="0.3")  # a run of per-template clusters without IG cannot move t
    assert not common.error and any("t stays fixed" in c.value for c in common.caption)
    assert common.slider(key="t").disabled and common.slider(key="t").value == 0.2


def test_query_lab_shows_the_querys_template_consistency(db):
    at = page("lab", query="geo-1")
    line = next(c.value for c in at.caption if c.value.startswith("Template consistency at t = 0.2"))
    with store.connect(db, read_only=True) as con:
        row = run_analyses.template_consistency(con, RUN).set_index("query_id").loc["geo-1"]
    assert f"agree {row['agreement']:.2f}" in line


# Custom question scored against the run


def test_custom_question_gets_qrnca_against_the_run(db, tiny, monkeypatch):
    from explorer import state

    steps = []
    for method in ("attribute", "attribute_top_down"):  # the preview, then IG layer blocks from the top
        run = getattr(NeuronAttribution, method)
        monkeypatch.setattr(
            NeuronAttribution,
            method,
            lambda self, *a, run=run, **k: steps.append(self.settings.steps) or run(self, *a, **k),
        )
    st.cache_data.clear()  # the same question attributed by an earlier test would come from the caches
    state._finished().clear()
    at = page("lab", source="custom")
    button(at, "Run QRNCA").click().run()
    assert not at.exception and not at.error, errors(at)
    assert steps == [1, 16]  # the gradient x activation preview first, then integrated gradients
    captions = [c.value.replace("\\", "") for c in at.caption]  # the run's name is escaped Markdown
    assert not any(c.startswith("Preview") for c in captions)  # replaced once IG finished
    assert any("QRNCA against run tiny-run" in c and "6 clusters and this question's, 7 in all" in c for c in captions)
    lm = tiny("llama")
    with store.connect(db, read_only=True) as con:
        counts, n = store.cluster_counts(con, RUN)
        settings = store.run_info(con, RUN).settings
    query = at.session_state["attributed"].copy().pop()
    rows = score_against_run(
        NeuronAttribution(lm, settings.attribution, settings.prompt).attribute(query), counts, n, settings.qrnca
    )
    kept = rows.loc[rows["kept"]].sort_values("naica_rank")
    assert at.multiselect(key="neurons").value == [f"{l}:{n}" for l, n in zip(kept["layer"], kept["neuron"])][:10]


# Per-neuron sliders and edit files


def test_per_neuron_slider_edits_one_neuron_and_is_in_the_link(db, tiny):
    at = page("lab", query="sci-2", neurons="0:5,3:95", mult="2")
    at.slider(key="each:3:95").set_value(0.0).run()
    assert not at.exception and at.query_params["each"] == "3:95*0"
    assert at.slider(key="each:0:5").value == 2.0
    lm = tiny("llama")
    prompts = NeuronAttribution(lm).prompts(QUERIES[1])
    want = renormalise(letter_probs(lm, prompts, {(0, 5): 2.0, (3, 95): 0.0}))[0, prompts[0].correct]
    assert metric(at, "Edited (2 neurons x their own multipliers)") == f"{want:.4g}"
    again = page("lab", query="sci-2", neurons="0:5,3:95", mult="2", each="3:95*0")
    assert (again.slider(key="each:3:95").value, again.slider(key="each:0:5").value) == (0.0, 2.0)
    assert metric(again, "Edited") == f"{want:.4g}"


@pytest.mark.parametrize("fmt", ["JSON", "CSV"])
def test_edit_exported_in_the_app_gives_the_same_probabilities_in_python(db, tiny, downloads, tmp_path, fmt):
    at = page("lab", query="geo-1", neurons="0:5,3:95,2:40", mult="0")
    at.slider(key="each:2:40").set_value(3.0).run()
    path = tmp_path / f"edit.{fmt.lower()}"
    path.write_text(download(at, downloads, f"Edit as {fmt}"))
    lm = tiny("llama")
    edit = load_edit(path)
    assert dict(edit) == {(0, 5): 0.0, (3, 95): 0.0, (2, 40): 3.0} and edit.fingerprint == lm.fingerprint
    prompts = NeuronAttribution(lm).prompts(QUERIES[3])
    assert metric(at, "Edited") == f"{renormalise(letter_probs(lm, prompts, edit))[0, prompts[0].correct]:.4g}"


def test_loading_an_edit_file_sets_neurons_and_multipliers(db, tiny):
    text = edits.dump(
        edits.EDIT,
        {"model": MODEL, "model_fingerprint": tiny("llama").fingerprint},
        pd.DataFrame({"layer": [1, 2], "neuron": [7, 9], "multiplier": [0.0, 2.5]}),
        "json",
    )
    at = page("lab", query="geo-1")
    at.file_uploader(key="edit_file").set_value(("edit.json", text.encode(), "application/json")).run()
    assert not at.exception and not at.error, errors(at)
    assert at.multiselect(key="neurons").value == ["1:7", "2:9"]
    assert (at.slider(key="each:1:7").value, at.slider(key="each:2:9").value) == (0.0, 2.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{broken", "the file: not valid JSON"),
        (
            b'{"format": "qrn-edit", "version": 1, "model": "m", "model_fingerprint": "0123", "neurons": []}',
            "the edit was made for model m (fingerprint 0123), not for tiny-llama",
        ),
        (None, "layer 9 is out of range; this model has layers 0-3."),
        (b"\xff\xfe", "the file is not UTF-8 text"),
    ],
)
def test_bad_edit_file_gets_one_line_and_changes_nothing(db, tiny, content, message):
    if content is None:
        content = edits.dump(
            edits.EDIT,
            {"model": MODEL, "model_fingerprint": tiny("llama").fingerprint},
            pd.DataFrame({"layer": [9], "neuron": [0], "multiplier": [0.0]}),
            "csv",
        ).encode()
    before = row_counts(db)
    at = page("lab", query="geo-1")
    selected = at.multiselect(key="neurons").value
    at.file_uploader(key="edit_file").set_value(("edit.json", content, "application/json")).run()
    assert not at.exception and len(at.error) == 1, errors(at)
    assert at.error[0].value.replace("\\", "").startswith(message), errors(at)
    assert at.multiselect(key="neurons").value == selected and row_counts(db) == before


# Neuron sets to take away


@pytest.mark.parametrize(
    ("params", "set_name"),
    [
        ({"set": "common"}, "common neurons"),
        ({"set": "query", "query": "sci-3"}, "QR neurons of query sci-3"),
        ({"set": "group", "group": "geography"}, "QR neurons of group geography"),
    ],
)
def test_neuron_sets_download_as_json_and_csv(db, downloads, tmp_path, params, set_name):
    at = page("export", **params)
    assert not at.exception and not at.error, errors(at)
    with store.connect(db, read_only=True) as con:
        qr, common = store.qr_neurons(con, RUN), run_analyses.common_neurons(con, RUN)
    want = {
        "common neurons": common,
        "QR neurons of query sci-3": qr.loc[qr["query_id"] == "sci-3"],
        "QR neurons of group geography": qr.loc[qr["query_id"].str.startswith("geo")],
    }[set_name]
    for fmt in ("JSON", "CSV"):
        kind, meta, table = edits.parse(download(at, downloads, f"Download {fmt}"), fmt)
        assert kind == edits.NEURON_SET and meta["set"] == set_name and meta["run"] == RUN
        assert set(zip(table["layer"], table["neuron"])) == set(zip(want["layer"], want["neuron"]))
    path = tmp_path / "set.json"
    path.write_text(download(at, downloads, "Download JSON"))
    assert set(load_edit(path, multiplier=0.0).values()) == {0.0}


def test_neuron_set_at_live_thresholds(db, downloads):
    at = page("export", set="common", u="0.9")
    _, meta, table = edits.parse(download(at, downloads, "Download CSV"), "csv")
    assert meta["set"] == "common neurons at t=0.2, u=0.9, v=20"
    assert len(table) == len(live(db, 0.2, 0.9, 20).common)


# Contrasts


@pytest.mark.parametrize("by", ["na", "naica"])
def test_contrast_page_lists_the_engines_most_separating_neurons_toward_each_group(two, by):
    at = page("contrast", group="science", group_b="geography", by=by)
    assert not at.exception and not at.error, errors(at)
    with store.connect(two, read_only=True) as con:
        rows = run_analyses.group_contrast(con, RUN, Pair("science", "geography"), by)
    first, second = [d.value for d in at.dataframe][:2]
    for shown_rows, expected in ((first, rows[rows["difference"] > 0]), (second, rows[rows["difference"] < 0])):
        expected = expected.head(20)
        assert shown_rows[["layer", "neuron"]].values.tolist() == expected[["layer", "neuron"]].values.tolist()
        np.testing.assert_allclose(shown_rows["difference"], expected["difference"])
    assert (first["difference"] > 0).all() and (second["difference"] < 0).all()
    assert f"{'NAICA' if by == 'naica' else 'NA'} · science" in first.columns
    assert at.query_params["by"] == by and len(at.get("plotly_chart")) == 1
    assert at.query_params["beside"] == DEEP_RUN  # another model's run of the dataset, by relative depth
    strings = plot_strings(at)
    assert any(MODEL in s for s in strings) and any(DEEP_MODEL in s for s in strings), strings


def test_contrast_page_refuses_a_link_that_names_one_group_twice(db):
    at = page("contrast", group="science", group_b="science")
    assert not at.exception and not at.error, errors(at)
    assert at.query_params["group_b"] == "geography"  # replaced by the other group, with a notice
    notices = [shown(w.value) for w in at.warning]
    assert notices == ["?group_b=science in the link is not another group of run tiny-run; showing geography instead."]
