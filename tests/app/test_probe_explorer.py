"""Issue 29, the explorer tried as a new user would (AppTest on the tiny models' seeded stores): the model it opens on,
card links that carry their model and run, a notice for every link value it replaces, the custom question in the
link, chart labels escaped once, readable ranks of a custom question's QR neurons, and a card's neuron edited alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
import re
import subprocess
from urllib.parse import parse_qsl, urlparse

import pandas as pd
import pytest

from app_driver import app_on_copy, button, errors, page, plot_strings
from explorer import lab_scoring, views
from explorer.state import START_MODEL
from markdown_view import rendered, shown
from qrcore import cli, store
from qrcore.evaluation import run_analyses
from qrcore.selection.custom import score_against_run
from seeded_store import DEEP_MODEL, DEEP_RUN, MODEL, QUERIES, RUN, seed_store

PLOTLY_ENTITIES = {"mu": "μ", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0", "times": "×", "plusmn": "±", "deg": "°"}
"""The named entities plotly.js decodes in its labels (svg_text_utils.convertEntities); it leaves others as written."""
QUOTED = 'He said "hi" & it\'s <b>bold</b>'
"""A group name with quotes, an ampersand and a tag: a chart label must show exactly it."""


def as_plotly_shows(text: str) -> str:
    """`text` as plotly.js shows a label: numeric and its few named entities decoded, once."""

    def decode(m: re.Match) -> str:
        code = m[1]
        if code.startswith("#"):
            return chr(int(code[2:], 16) if code[1] == "x" else int(code[1:]))
        return PLOTLY_ENTITIES.get(code, m[0])

    return re.sub(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);", decode, text)


def notices(at) -> list[str]:
    """The inline notices (warnings) of the page, as shown."""
    return [shown(w.value) for w in at.warning]


# qrn explore and scripts/explore.sh open on the README's model


@pytest.mark.parametrize(
    ("argv", "env_model", "opens_on"),
    [([], None, START_MODEL), ([], "smollm2", "smollm2"), (["--model", "gemma3-270m"], "smollm2", "gemma3-270m")],
)
def test_qrn_explore_opens_on_the_readmes_model_unless_told_otherwise(monkeypatch, argv, env_model, opens_on):
    started = {}
    monkeypatch.setattr(subprocess, "call", lambda command, env, cwd: started.update(env) or 0)
    monkeypatch.delenv("QRN_MODEL", raising=False)
    if env_model:
        monkeypatch.setenv("QRN_MODEL", env_model)
    with pytest.raises(SystemExit):
        cli.main(["explore", *argv])  # what scripts/explore.sh runs, without --model
    assert (started.get("QRN_MODEL") or START_MODEL) == opens_on
    assert START_MODEL == "qwen2.5-coder-1.5b"


# Links keep the model and run they came from


@pytest.mark.parametrize("name", ["heatmaps", "common", "consistency", "export", "lab"])
@pytest.mark.parametrize(("model", "run"), [(MODEL, RUN), (DEEP_MODEL, DEEP_RUN)])
def test_every_neuron_tables_card_links_carry_the_model_and_run(two, name, model, run):
    at = page(name, sidebar=True, model=model)
    assert not at.exception and not at.error, errors(at)
    links = [link for table in at.dataframe if "card" in table.value for link in table.value["card"]]
    assert links
    for link in links:
        url = urlparse(link)
        params = dict(parse_qsl(url.query))
        assert url.path == "neuron" and params["model"] == model and params["run"] == run, link


def test_a_card_link_opens_that_models_neuron_in_a_new_tab(two):
    link = page("common", sidebar=True, model=DEEP_MODEL).dataframe[0].value["card"].iloc[0]
    params = dict(parse_qsl(urlparse(link).query))
    card = page("neuron", **params)  # a new tab: nothing but the link
    assert not card.exception and not card.error and not card.warning, errors(card)
    assert card.sidebar.selectbox(key="model").value == DEEP_MODEL
    assert card.sidebar.selectbox(key="run").value == DEEP_RUN
    layer, index = views.parse_neuron(params["neuron"])
    with store.connect(two, read_only=True) as con:
        want = run_analyses.neuron_card(con, DEEP_RUN, layer, index)
    frequency = next(m.value for m in card.metric if m.label == "Cluster frequency")
    assert frequency == f"{want.frequency:.0%}" and want.frequency > 0
    assert (card.query_params["model"], card.query_params["run"]) == (DEEP_MODEL, DEEP_RUN)


def test_edit_it_in_the_lab_edits_the_cards_neuron_alone_and_keeps_model_and_run(two):
    at = page("neuron", sidebar=True, model=DEEP_MODEL, neuron="2:17", query="geo-1")
    button(at, "Edit it in the lab").click().run()
    assert not at.exception and not at.error, errors(at)
    assert at.multiselect(key="neurons").value == ["2:17"]
    assert next(m.label for m in at.metric if m.label.startswith("Edited")) == "Edited (1 neurons x 1)"
    assert (at.query_params["model"], at.query_params["run"], at.query_params["neurons"]) == (
        DEEP_MODEL,
        DEEP_RUN,
        "2:17",
    )


# A link value that cannot be taken is replaced, and one line says so


def lab_defaults(db: Path, query: str) -> str:
    """The neurons the lab selects for a query of RUN when it opens: its 10 best QR neurons."""
    with store.connect(db, read_only=True) as con:
        qr = store.qr_neurons(con, RUN, "qrnca", query)
    return ",".join(f"{l}:{n}" for l, n in zip(qr["layer"], qr["neuron"]))


@pytest.mark.parametrize(
    ("name", "params", "notice"),
    [
        (
            "heatmaps",
            {"model": "nope"},
            "?model=nope in the link is not a model with runs in this store; showing tiny-llama instead.",
        ),
        (
            "heatmaps",
            {"run": "nope"},
            "?run=nope in the link is not a finished run of tiny-llama; showing tiny-run instead.",
        ),
        (
            "heatmaps",
            {"run": DEEP_RUN},
            f"?run={DEEP_RUN} in the link is not a finished run of tiny-llama; showing tiny-run instead.",
        ),
        (
            "heatmaps",
            {"group": "nope"},
            "?group=nope in the link is not a group of run tiny-run; showing geography instead.",
        ),
        (
            "heatmaps",
            {"layers": "5-2"},
            "?layers=5-2 in the link is not a layer range first-last within 0-3; showing 0-3 instead.",
        ),
        (
            "heatmaps",
            {"layers": "2"},
            "?layers=2 in the link is not a layer range first-last within 0-3; showing 0-3 instead.",
        ),
        (
            "compare",
            {"model_b": "nope"},
            "?model_b=nope in the link is not a model with a finished run on a dataset of tiny-llama; showing "
            "tiny-gemma3 instead.",
        ),
        ("lab", {"mult": "abc"}, "?mult=abc in the link is not a multiplier from 0 to 4; showing 1 instead."),
        ("lab", {"mult": "9"}, "?mult=9 in the link is not a multiplier from 0 to 4; showing 1 instead."),
        (
            "lab",
            {"neurons": "0:5,99:1"},
            "?neurons=0:5,99:1 in the link is not a list of tiny-llama's neurons as layer:index (layers 0-3, "
            "neurons 0-95); showing {defaults} instead.",
        ),
        ("lab", {"query": "nope"}, "?query=nope in the link is not a query of this run; showing sci-1 instead."),
        ("common", {"v": "inf"}, "?v=inf in the link is not a whole v from 1 to 1000; showing 20 instead."),
        ("common", {"v": "2.5"}, "?v=2.5 in the link is not a whole v from 1 to 1000; showing 20 instead."),
        (
            "common",
            {"t": "0.01"},
            "?t=0.01 in the link is not a t from 0.05 to 0.99 (the run stores no neurons below t = 0.05); "
            "showing 0.2 instead.",
        ),
        (
            "common",
            {"u": "nan"},
            "?u=nan in the link is not a u from 0.01 to 1 (a share of all clusters); showing 0.3 instead.",
        ),
        (
            "overlap",
            {"method": "nope"},
            "?method=nope in the link is not one of qrnca, random, activation, kn, qrnca_no_ica, qrnca_with_common; showing qrnca instead.",
        ),
    ],
)
def test_a_link_value_that_cannot_be_taken_is_replaced_with_one_line_saying_so(two, name, params, notice):
    at = page(name, **params)
    assert not at.exception and not at.error, errors(at)
    assert notices(at) == [notice.format(defaults=lab_defaults(two, "sci-1"))]
    assert next(iter(params)) in at.query_params  # the link now holds what is shown


def test_a_replaced_link_value_shows_as_text_and_shortened(two):
    at = page("heatmaps", group=f"<img src=x> [a](http://x) {'y' * 200}")
    assert not at.exception and not at.error, errors(at)
    (notice,) = notices(at)
    assert notice.startswith("?group=<img src=x> [a](http://x) yyy") and "…" in notice and len(notice) < 200
    assert "<img" not in rendered(at.warning[0].value) and "<a " not in rendered(at.warning[0].value)


def test_a_good_link_gets_no_notice(two):
    at = page("heatmaps", model=DEEP_MODEL, run=DEEP_RUN, group="science", layers="1-4", t="0.3", v="5")
    assert not at.exception and not at.error and not at.warning, (errors(at), notices(at))


# The custom question is in the link


def test_custom_question_is_kept_in_the_link_and_a_shared_link_shows_it(db):
    at = page("lab", source="custom")
    at.text_input(key="q_text").set_value("Which metal is liquid at room temperature?").run()
    at.text_area(key="q_options").set_value("Iron\nMercury\nGold").run()
    at.text_input(key="q_answer").set_value("Mercury").run()
    assert not at.exception and not at.error, errors(at)
    link = {k: at.query_params[k] for k in ("source", "q_text", "q_options", "q_answer")}
    assert link == {
        "source": "custom",
        "q_text": "Which metal is liquid at room temperature?",
        "q_options": "Iron\nMercury\nGold",
        "q_answer": "Mercury",
    }
    shared = page("lab", **link)
    assert not shared.exception and not shared.error, errors(shared)
    assert shared.text_input(key="q_text").value == link["q_text"]
    assert shared.text_area(key="q_options").value == link["q_options"]
    assert shared.text_input(key="q_answer").value == "Mercury"
    options = {x for s in plot_strings(shared) for x in [s] if s.startswith(("A. ", "B. ", "C. "))}
    assert {"A. Iron", "B. Mercury ✓", "C. Gold"} <= options


# Chart labels are escaped once


def test_plain_escapes_tags_once_and_plotly_shows_the_text_as_written():
    assert views.plain(QUOTED) == 'He said "hi" &amp; it\'s &lt;b&gt;bold&lt;/b&gt;'
    assert as_plotly_shows(views.plain(QUOTED)) == QUOTED
    assert as_plotly_shows(views.plain("&quot; &amp;")) == "&quot; &amp;"  # entities typed by a user stay as typed


@pytest.fixture(scope="module")
def quoted_store(tmp_path_factory, tiny) -> Path:
    """A finished tiny-llama run whose first group's name is QUOTED."""
    path = tmp_path_factory.mktemp("quoted") / "qrn.duckdb"
    queries = [replace(q, group=QUOTED) if q.group == "science" else q for q in QUERIES]
    seed_store(path, tiny("llama"), queries)
    return path


@pytest.mark.parametrize("name", ["heatmaps", "overlap", "methods", "consistency", "neuron", "compare"])
def test_chart_labels_show_quotes_as_written(quoted_store, tmp_path, monkeypatch, name):
    app_on_copy(quoted_store, tmp_path, monkeypatch)
    at = page(name, group=QUOTED)
    assert not at.exception and not at.error, errors(at)
    labels = [as_plotly_shows(s) for s in plot_strings(at)]
    if name != "compare":  # one model: the compare page draws no chart
        assert any(QUOTED in label for label in labels), labels
    assert not [label for label in labels if re.search(r"&(quot|#x?\d+|amp|lt|gt);", label)], labels


# A custom question's QR neurons


def test_custom_question_ranks_read_one_two_three_beside_their_naica_rank(db, monkeypatch):
    def two_best_common(*args, **kwargs) -> pd.DataFrame:  # as when the question's two best neurons are common ones
        rows = score_against_run(*args, **kwargs)
        best = rows["naica_rank"].isin([1, 2])
        return rows.assign(is_common=rows["is_common"] | best, kept=rows["kept"] & ~best)

    monkeypatch.setattr(lab_scoring, "score_against_run", two_best_common)
    at = page("lab", source="custom")
    button(at, "Run QRNCA").click().run()
    assert not at.exception and not at.error, errors(at)
    table = next(t.value for t in at.dataframe if {"rank", "naica_rank"} <= set(t.value))
    assert table["rank"].tolist() == list(range(1, len(table) + 1)) and len(table) > 0
    assert table["naica_rank"].tolist()[:3] == [3, 4, 5] and table["naica_rank"].is_monotonic_increasing
    assert table["score"].is_monotonic_decreasing
    assert at.multiselect(key="neurons").value == [f"{l}:{n}" for l, n in zip(table["layer"], table["neuron"])][:10]
