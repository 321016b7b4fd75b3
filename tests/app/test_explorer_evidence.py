"""The query lab's evidence that an edit is real (issue 25) through streamlit.testing's AppTest on the tiny model's
seeded store: the scorecard, the dose-response, the per-neuron effects, the readable probabilities, the streamed
answers and the heatmap page's group edit show the engine's numbers (`qrcore.evaluation.lab`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from app_driver import button, errors, page, typed
from explorer import views
from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.queries import make_query
from qrcore.editing.controls import matched_controls
from qrcore.editing.evidence import MEASURES
from qrcore.editing.readable import OptionProbs
from qrcore.editing.scaling import generate, letter_probs
from qrcore.evaluation import lab
from qrcore.evaluation.run_analyses import heatmap
from qrcore.selection.qrnca import METHOD_NAMES
from qrcore.selection.topk import top_neurons
from seeded_store import QUERIES, RUN

NEURONS = [(0, 5), (2, 40), (3, 95)]
LINK = {"query": "sci-1", "neurons": "0:5,2:40,3:95", "mult": "0"}


def frame(at, first_column: str) -> pd.DataFrame:
    """The page's table whose first column is `first_column`."""
    return next(d.value for d in at.dataframe if d.value.columns[0] == first_column)


def figure(at, trace: str) -> dict:
    """The page's plotly figure holding a trace named `trace`."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(s for s in specs if any(t.get("name") == trace for t in s["data"]))


def measured(db, controls: int = 4, locality: int = 2):
    """The lab page opened on LINK, its evidence measured with `controls` draws and `locality` queries."""
    at = page("lab", **LINK)
    at.number_input(key="evidence_controls").set_value(controls)
    at.number_input(key="evidence_locality").set_value(locality).run()
    button(at, "Measure evidence").click().run()
    assert not at.exception and not at.error, errors(at)
    return at


@pytest.fixture(scope="module")
def engine(seeded, tiny):
    """The engine's lab on the seeded run, and its scorecard, sweeps and per-neuron effects of NEURONS x 0."""
    lm, run = tiny("llama"), lab.read_lab(RUN, str(seeded))
    query, edit = run.query("sci-1"), lab.ControlledEdit(0.0, 4, 0)
    card = lab.edit_scorecard(lm, run, query, NEURONS, "", edit, 2, with_fluency=True)
    sets = {"selected": NEURONS, **{METHOD_NAMES[m]: run.neurons("sci-1", m) for m in run.qr}}
    dose, band = lab.edit_sweep(lm, run, query, sets), lab.control_sweep(lm, run, query, NEURONS, edit)
    return lm, run, card, dose, band, lab.edit_neuron_effects(lm, run, query, NEURONS, 0.0)


def test_scorecard_shows_the_engines_measures_beside_their_controls(db, engine):
    lm, run, card, *_ = engine
    at = measured(db)
    shown = frame(at, "measure")
    want = card.table()
    assert list(shown["measure"]) == list(want["measure"]) == list(MEASURES)
    assert list(shown["what it means"]) == [MEASURES[m] for m in want["measure"]]
    for column, engine_column in [
        ("P before", "p_before"),
        ("P after", "p_after"),
        ("change", "change"),
        ("control low", "control_low"),
        ("control high", "control_high"),
        ("p-value", "p_value"),
        ("accuracy before", "acc_before"),
        ("accuracy after", "acc_after"),
        ("accuracy, control", "acc_control"),
    ]:
        np.testing.assert_allclose(shown[column], want[engine_column], rtol=1e-4, atol=1e-7, err_msg=column)
    np.testing.assert_allclose(shown["control change"], [m.test.control_mean for m in card.measures], rtol=1e-4)
    assert list(shown["queries"]) == list(want["queries"])
    captions = " ".join(c.value for c in at.caption)
    assert "4 seeded draws" in captions and "same layers and count per layer" in captions
    controls = figure(at, "the edit")
    boxes = [t for t in controls["data"] if t["type"] == "box"]
    np.testing.assert_allclose(typed(boxes[0]["x"]), card.measures[0].test.controls, rtol=1e-4, atol=1e-7)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["n-gram entropy, unedited"] == f"{card.fluency.entropy_before:.3f}"
    assert metrics["n-gram entropy, edited"] == f"{card.fluency.entropy_after:.3f}"


def test_scorecard_is_measured_only_on_the_button_and_says_why_it_waits(db):
    at = page("lab", **LINK)
    assert not any(d.value.columns[0] == "measure" for d in at.dataframe)
    assert any("*Measure evidence* runs the edit and 30 control draws" in c.value for c in at.caption)
    mixed = page("lab", **LINK, each="3:95*2")
    assert any("one multiplier for every selected neuron" in i.value for i in mixed.info)


def test_dose_response_plot_and_flips_are_the_engines(db, engine):
    *_, dose, band, _ = engine
    at = measured(db)
    fig = figure(at, "selected")
    traces = {t.get("name"): t for t in fig["data"]}
    for name, p in zip(dose.names, dose.p_correct):
        np.testing.assert_allclose(typed(traces[name]["y"]), p, rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(typed(traces["selected"]["x"]), dose.multipliers)
    low = next(t for t in fig["data"] if t.get("fill") == "tonexty")
    np.testing.assert_allclose(typed(low["y"]), np.percentile(band.p_correct, 5, axis=0), rtol=1e-4, atol=1e-7)
    assert low["name"] == "controls, 5-95% of 4 draws"
    flips = frame(at, "set")
    pd.testing.assert_frame_equal(
        flips.rename(columns={"flips below 1 at": "flip_below", "flips above 1 at": "flip_above"}),
        dose.flips(),
        rtol=1e-4,
        check_dtype=False,
    )


def test_per_neuron_effects_table_is_the_engines(db, engine):
    *_, effects = engine
    at = measured(db)
    shown = frame(at, "layer").rename(columns={"P, this neuron alone": "p_alone", "change alone": "change"})
    pd.testing.assert_frame_equal(shown, effects.table(), rtol=1e-4, check_dtype=False)
    assert any(f"{effects.p_before:.4f} unedited, {effects.p_all:.4f} with all 3" in m.value for m in at.markdown)


def test_probabilities_are_renormalised_over_the_options_beside_the_raw_share(db, tiny):
    at = page("lab", **LINK)
    lm = tiny("llama")
    prompts = NeuronAttribution(lm).prompts(QUERIES[0])
    raw = letter_probs(lm, prompts, dict.fromkeys(NEURONS, 0.0))[0]
    edited = OptionProbs.of(prompts[0], raw)
    metric = next(m for m in at.metric if m.label.startswith("Edited (3 neurons x 0)"))
    assert metric.value == f"{edited.probability[edited.correct]:.4g}"
    assert any(f"raw share of the vocabulary: {raw[prompts[0].correct]:.4g}" in c.value for c in at.caption)
    table = frame(at, "setting")
    rows = table[table["setting"] == "edited"]
    np.testing.assert_allclose(rows["probability over the options"], edited.probability, rtol=1e-4)
    np.testing.assert_allclose(rows["raw share of the vocabulary"], raw, rtol=1e-4)
    assert rows["probability over the options"].sum() == pytest.approx(1.0)
    assert any("**Control**: the same multipliers applied to as many random neurons" in c.value for c in at.caption)


def test_answers_stream_side_by_side_as_generate_gives_them_and_the_control_on_request(db, tiny, monkeypatch):
    import qrcore.editing.streaming as streaming

    pieces: list[tuple[int, str]] = []  # (which stream, piece) in the order the page read them
    original = streaming.stream

    def counted(*args, **kwargs):
        which = len({i for i, _ in pieces})
        for piece in original(*args, **kwargs):
            pieces.append((which, piece))
            yield piece

    monkeypatch.setattr(streaming, "stream", counted)
    at = page("lab", **LINK)
    button(at, "Generate free-form answers").click().run()
    assert not at.exception and not at.error, errors(at)
    lm, question = tiny("llama"), QUERIES[0].question
    texts = [m.value for m in at.markdown]
    plain, edited = generate(lm, question), generate(lm, question, dict.fromkeys(NEURONS, 0.0))
    assert texts[texts.index("**Unedited**") + 1] == views.md(plain)
    assert texts[texts.index("**Edited**") + 1] == views.md(edited)
    assert ["".join(p for i, p in pieces if i == which) for which in (0, 1)] == [plain, edited]
    assert [i for i, _ in pieces[:4]] == [0, 1, 0, 1]  # token by token, side by side
    assert "**Control: random neurons, same layers**" not in texts
    button(at, "Generate the control's answer").click().run()
    texts = [m.value for m in at.markdown]
    draw = matched_controls(NEURONS, [lm.model.config.intermediate_size] * 4, 1, 0)[0]
    control = generate(lm, question, dict.fromkeys(draw, 0.0))
    assert texts[texts.index("**Control: random neurons, same layers**") + 1] == views.md(control)
    assert texts[texts.index("**Unedited**") + 1] == views.md(plain)  # kept, not generated again


@pytest.mark.parametrize("source", ["qr", "top"])
def test_heatmap_group_edit_shows_accuracy_per_group_held_out_beside_controls(db, tiny, source):
    at = page("heatmaps", group="science")
    at.radio(key="group_source").set_value(source).run()
    if source == "top":
        at.number_input(key="group_top").set_value(5)
    at.number_input(key="group_controls").set_value(3).run()
    button(at, "Suppress the group's neurons (x 0)").click().run()
    assert not at.exception and not at.error, errors(at)
    lm, run = tiny("llama"), lab.read_lab(RUN, str(db))
    neurons = None
    if source == "top":
        with store.connect(db, read_only=True) as con:
            science = heatmap(con, run.info.run_id, "science")
        neurons = [(l, n) for l, n, s in top_neurons(science, 5) if s > 0]
    card = lab.group_scorecard(lm, run, "science", neurons, edit=lab.ControlledEdit(0.0, 3, 0))
    shown, want = frame(at, "measure"), card.table()
    assert list(shown["measure"]) == ["geography", "science"]
    assert list(shown["what it means"]) == [
        "held-out queries of geography",
        "held-out queries of science (the edited group)",
    ]
    for column, engine_column in [("P after", "p_after"), ("p-value", "p_value"), ("accuracy after", "acc_after")]:
        np.testing.assert_allclose(shown[column], want[engine_column], rtol=1e-4, atol=1e-7, err_msg=column)
    assert any(f"**group science**: {len(card.neurons)} neurons x 0" in m.value for m in at.markdown)


def test_evidence_of_a_question_of_ones_own_is_measured_against_the_run(db, tiny):
    at = page("lab", source="custom", neurons="0:5,2:40", mult="0")
    at.number_input(key="evidence_controls").set_value(3).run()
    button(at, "Measure evidence").click().run()
    assert not at.exception and not at.error, errors(at)
    lm, run = tiny("llama"), lab.read_lab(RUN, str(db))
    own = make_query("What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], "Paris")
    card = lab.edit_scorecard(lm, run, own, [(0, 5), (2, 40)], "", lab.ControlledEdit(0.0, 3, 0), 5, with_fluency=True)
    shown = frame(at, "measure")
    np.testing.assert_allclose(shown["P after"], card.table()["p_after"], rtol=1e-4, atol=1e-7)
    assert list(frame(at, "set")["set"]) == ["selected"]  # no stored QR neurons of any method for it


def test_a_baselines_neurons_of_the_query_are_measured_on_request(db, tiny):
    lm, run = tiny("llama"), lab.read_lab(RUN, str(db))
    method = next(m for m in ("kn", "random", "activation") if run.neurons("sci-1", m))
    at = page("lab", **LINK)
    assert at.selectbox(key="evidence_whose").options[0] == "the selection"
    at.selectbox(key="evidence_whose").set_value(METHOD_NAMES[method])
    at.number_input(key="evidence_controls").set_value(3).run()
    button(at, "Measure evidence").click().run()
    assert not at.exception and not at.error, errors(at)
    card = lab.query_scorecard(lm, run, "sci-1", method, lab.ControlledEdit(0.0, 3, 0), 5)
    np.testing.assert_allclose(frame(at, "measure")["P after"], card.table()["p_after"], rtol=1e-4, atol=1e-7)
    assert len(frame(at, "layer")) == len(run.neurons("sci-1", method))  # its neurons, each alone
