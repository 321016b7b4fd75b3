"""The query lab's custom question live (issue 26): the model's live rule with its label and why, the button that
recomputes with the authors' rule, and the partial results layer block by layer block from the top, through
streamlit.testing's AppTest on the tiny model's seeded store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import streamlit as st

from app_driver import button, errors, page, typed
from explorer import lab_scoring
from model_hooks import hooks_left
from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.live_rule import AUTHORS, LiveRule, save_live_rule
from qrcore.selection.custom import score_against_run
from qrcore.selection.qrnca import query_na
from qrcore.selection.topk import top_neurons
from qrcore.settings import AttributionSettings
from seeded_store import MODEL, RUN

GL4 = AttributionSettings(4, "gauss_legendre")
WHY = "gauss_legendre 4 (25% of the authors' FLOPs): its QR neurons match the authors' rule with a mean Jaccard of 0.97"


@pytest.fixture
def measured(tmp_path, monkeypatch):
    """A live-rules file in which the tiny model's live rule is Gauss-Legendre with 4 nodes."""
    path = tmp_path / "live_rules.json"
    save_live_rule(MODEL, LiveRule(GL4, WHY), path)
    monkeypatch.setattr("qrcore.attribution.live_rule.LIVE_RULES", path)
    return path


@pytest.fixture
def rules(monkeypatch) -> list[AttributionSettings]:
    """The rule of every top-down attribution that the page starts, in order."""
    seen: list[AttributionSettings] = []
    top_down = NeuronAttribution.attribute_top_down

    def spy(self, *args, **kwargs):
        seen.append(self.settings)
        return top_down(self, *args, **kwargs)

    monkeypatch.setattr(NeuronAttribution, "attribute_top_down", spy)
    return seen


def custom(question: str):
    """The lab on a question of one's own (a new text, so no earlier test's result is cached), QRNCA started."""
    at = page("lab", source="custom", q_text=question)
    assert not at.exception and not at.error, errors(at)
    button(at, "Run QRNCA").click().run()
    assert not at.exception and not at.error, errors(at)
    return at


def captions(at) -> list[str]:
    """The page's captions as shown (the run's name is escaped Markdown)."""
    return [c.value.replace("\\", "") for c in at.caption]


def qr_shown(at) -> list[tuple[int, int]]:
    """The (layer, neuron) rows of the page's QR-neuron table."""
    frame = next(d.value for d in at.dataframe if "naica_rank" in d.value.columns and "kept" not in d.value.columns)
    return list(zip(frame["layer"].astype(int), frame["neuron"].astype(int)))


def qr_expected(tiny, db, query, rule: AttributionSettings) -> list[tuple[int, int]]:
    """The question's QR neurons against the run, attributed whole under `rule`."""
    with store.connect(db, read_only=True) as con:
        counts, n = store.cluster_counts(con, RUN)
        settings = store.run_info(con, RUN).settings
    result = NeuronAttribution(tiny("llama"), rule, settings.prompt).attribute(query)
    rows = score_against_run(result, counts, n, settings.qrnca)
    kept = rows.loc[rows["kept"]].sort_values("naica_rank")
    return list(zip(kept["layer"].astype(int), kept["neuron"].astype(int)))


def test_custom_question_uses_the_live_rule_says_why_and_recomputes_with_the_authors_rule(db, tiny, measured, rules):
    at = custom("Which city is the capital of Italy?")
    shown = captions(at)
    assert f"Integration rule of Eq. 5: gauss_legendre 4. Chosen because: {WHY}." in shown
    assert any(c.startswith("Products: float32 products:") for c in shown)  # the tiny model's bf16 was never measured
    assert any("with gauss_legendre 4; mean P(correct)" in c for c in shown)
    assert rules == [GL4]
    query = at.session_state["attributed"].copy().pop()
    assert qr_shown(at) == qr_expected(tiny, db, query, GL4)
    button(at, lab_scoring.RECOMPUTE).click().run()
    assert not at.exception and not at.error, errors(at)
    assert rules == [GL4, AUTHORS]
    assert any(
        c.startswith(
            "Integration rule of Eq. 5: linspace 16, the authors' rule, in float32 products, as asked; "
            f"the live rule would be {WHY}"
        )
        for c in captions(at)
    )
    assert qr_shown(at) == qr_expected(tiny, db, query, AUTHORS)
    at.run()  # the exact result stays, without the button
    assert rules == [GL4, AUTHORS] and lab_scoring.RECOMPUTE not in [b.label for b in at.button]


def test_a_model_without_a_measured_rule_uses_the_authors_rule_says_why_and_offers_no_button(db, rules):
    at = custom("Which city is the capital of Spain?")
    assert (
        "Integration rule of Eq. 5: linspace 16. Chosen because: the authors' rule (linspace 16): no live rule was "
        f"measured for {MODEL}." in captions(at)
    )
    assert rules == [AUTHORS] and lab_scoring.RECOMPUTE not in [b.label for b in at.button]


def test_partial_results_come_block_by_block_from_the_top_and_leaving_stops_them_cleanly(
    db, tiny, measured, monkeypatch
):
    from explorer import state

    parts = []
    show = lab_scoring.show_partial

    def leave_after_two(placeholder, part, settings):
        show(placeholder, part, settings)
        parts.append(part)
        if len(parts) == 2:
            st.stop()  # what leaving the page or changing the question does: the script stops at its next st call

    monkeypatch.setattr(lab_scoring, "show_partial", leave_after_two)
    at = custom("Which city is the capital of Portugal?")
    assert [p.layers for p in parts] == [range(3, 4), range(2, 4)]  # tiny llama: 4 layers, blocks of 1
    shown = captions(at)
    assert any(c.startswith("Partial result (") and "layers 2-3 of 4 attributed, from the top down" in c for c in shown)
    assert not any("QRNCA against run" in c for c in shown)
    query = at.session_state["attributed"].copy().pop()
    with store.connect(db, read_only=True) as con:
        settings = store.run_info(con, RUN).settings
    second = list(NeuronAttribution(tiny("llama"), GL4, settings.prompt).attribute_top_down(query, 1))[1]
    na = query_na(second.attribution.ig, settings.qrnca).na  # (layers, neurons)
    heat = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]
    assert typed(heat["y"]).tolist() == [2, 3]  # the layers so far, from the first attributed up
    table = at.dataframe[-1].value
    want = top_neurons(na, lab_scoring.TOP_NA)
    assert list(zip(table["layer"], table["neuron"])) == [(l, n) for l, n, _ in want]
    np.testing.assert_allclose(table["score"], [s for *_, s in want], rtol=1e-5)
    assert set(table["layer"]) <= {2, 3}
    lm = state.model(MODEL)  # the app's model, after the stop: no hook left, its lock free, nothing kept
    assert hooks_left(lm.model) == 0
    lock = state._lock(f"model:{MODEL}")
    assert lock.acquire(blocking=False)
    lock.release()
    assert not any(key[1] == query for key in state._finished())
    monkeypatch.setattr(lab_scoring, "show_partial", show)
    at.run()  # back on the page: it runs to the end and the final QRNCA replaces the partial view
    assert not at.exception and not at.error, errors(at)
    shown = captions(at)
    assert any("QRNCA against run tiny-run" in c for c in shown) and not any(c.startswith("Partial") for c in shown)
    assert qr_shown(at) == qr_expected(tiny, db, query, GL4)
