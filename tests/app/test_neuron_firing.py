"""The neuron card's 'What makes it fire': the stored top queries as the store holds them, computed ones when none are
stored, and the neuron's activation on every token of a prompt or typed text as escaped, coloured spans."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest

from app_driver import button, errors, page
from explorer import state
from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.runs.activations import store_activations
from qrcore.selection.activations import TOP_QUERIES, token_activations, top_queries
from qrcore.settings import RunSettings
from seeded_store import QUERIES, RUN

SPAN = re.compile(r'<span title="([-0-9.]+)"[^>]*>(.*?)</span>')


def firing_table(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "activation" in d.value.columns and "rank" in d.value.columns)


def spans(at) -> list[tuple[float, str]]:
    """(value, text) of every token span of the per-token view."""
    body = next(m.value for m in at.markdown if "<span title=" in m.value)
    return [(float(v), html.unescape(t)) for v, t in SPAN.findall(body)]


def test_card_shows_the_stored_top_queries(db, tiny):
    store_activations(tiny("llama"), RUN, db)
    at = page("neuron", neuron="1:50")
    assert not at.exception and not at.error, errors(at)
    with store.connect(db, read_only=True) as con:
        want = store.neuron_top_queries(con, store.run_info(con, RUN).run_id, 1, 50)
    table = firing_table(at)
    assert table["query_id"].tolist() == want["query_id"].tolist() and len(table) == min(TOP_QUERIES, len(QUERIES))
    np.testing.assert_allclose(table["activation"], want["activation"], rtol=1e-6)
    assert table["question"].tolist() == [next(q.question for q in QUERIES if q.id == i) for i in table["query_id"]]
    assert any("among 6 of its 6 queries" in c.value for c in at.caption)
    assert at.selectbox(key="fire_query").value == want["query_id"].iloc[0]  # the per-token view starts on it


@pytest.fixture
def computed():
    """The activations the card computes are kept per process (other modules' cards compute them for the same run
    id): dropped before the test and after it, for the next ones."""
    state._activations().clear()
    yield
    state._activations().clear()


def test_card_ranks_computed_activations_when_none_are_stored(db, tiny, computed):
    at = page("neuron", neuron="2:5")
    assert any("top queries are not stored" in c.value for c in at.caption)
    button(at, "Compute its activation on all 6 queries").click().run()
    assert not at.exception, at.exception
    want = top_queries(tiny("llama"), QUERIES, RunSettings()).rows()
    want = want.loc[(want["layer"] == 2) & (want["neuron"] == 5)]
    table = firing_table(at)
    assert table["query_id"].tolist() == want["query_id"].tolist()
    np.testing.assert_allclose(table["activation"], want["activation"], rtol=1e-5)


def test_token_view_of_a_query_prompt_and_of_typed_text(db, tiny):
    lm = tiny("llama")
    at = page("neuron", neuron="3:7")
    shown = spans(at)  # a query's prompt first: the first query, first template
    prompt = NeuronAttribution(lm).prompts(QUERIES[0])[0]
    np.testing.assert_allclose([v for v, _ in shown], token_activations(lm, prompt.input_ids, 3, 7), atol=1e-4)
    at.radio(key="fire_source").set_value("text").run()
    at.text_area(key="fire_text").set_value("<b>x</b> & 日本\nParis").run()
    assert not at.exception and not at.error, errors(at)
    ids = lm.tokenizer.encode("<b>x</b> & 日本\nParis")
    shown = spans(at)
    assert "".join(t for _, t in shown).startswith("<b>x</b> & ") and "<0xE6>" in "".join(t for _, t in shown)
    assert "<b>x</b>" not in next(m.value for m in at.markdown if "<span title=" in m.value)  # escaped
    np.testing.assert_allclose([v for v, _ in shown], token_activations(lm, ids, 3, 7), atol=1e-4)


def test_token_view_says_what_is_wrong_with_empty_text(db):
    at = page("neuron", neuron="0:1")
    at.radio(key="fire_source").set_value("text").run()
    at.text_area(key="fire_text").set_value("").run()
    assert not at.exception
    assert errors(at) == [
        "the text has 0 tokens; type between 1 and 512 tokens of text to see the neuron's activation on each."
    ]
