"""The query lab's evidence that an edit is real (issue 25): the edit's scorecard beside matched random controls, its
dose-response, each neuron's own effect, the group edit of the heatmap page, and the free-form answer streamed
unedited, edited and under a control. The numbers come from `qrcore.evaluation.lab`, through `explorer.state`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer import state, views
from qrcore.data.queries import Query
from qrcore.editing.controls import matched_controls
from qrcore.editing.evidence import MEASURES, DoseResponse, NeuronEffects, Scorecard
from qrcore.editing.fluency import ngram_entropy
from qrcore.evaluation.lab import ControlledEdit, LabRun
from qrcore.selection.qrnca import METHOD_NAMES
from qrcore.selection.topk import top_neurons

Neuron = tuple[int, int]
FLUENCY = "free-form answers to the plain question before and after, scored by n-gram entropy (it falls when the "
FLUENCY += "edit makes the model repeat itself)"
MEANINGS = {**MEASURES, "fluency": FLUENCY}
"""EasyEdit's measures of an edit and what each means, as the scorecard's rows say."""
CONTROL = (
    "**Control**: the same multiplier applied to random neurons with the same layers and count per layer as the "
    "edit ({k} seeded draws). **p**: one-sided permutation p-value, (1 + draws whose change is at least as extreme) "
    "/ (1 + draws). **Interval**: the central 95% of the draws' changes. **P**: the correct letter's probability "
    "renormalised over the option letters, mean over the prompts."
)
SELECTED = "selected"
"""The dose-response's name for the neurons measured."""
SELECTION = "the selection"
"""The evidence's choice of the lab's selected neurons (the others are methods' QR neurons of the query)."""
EVIDENCE_FOR = "evidence_for"
"""Session key: the edit whose evidence was asked for by the button (its numbers are shown while it stays)."""
GENERATED = "generated"
"""Session key: (question, edit) -> the streamed answers (unedited, edited, control) shown so far."""


def control_edit(name: str, edit: dict[Neuron, float]) -> dict[Neuron, float]:
    """The lab's control of an edit: random neurons with the same layers and count (one seeded matched draw), each
    taking the multiplier of its counterpart in sorted order."""
    if not edit:
        return {}
    n_layers, n_neurons = state.shape(name)
    draw = matched_controls(sorted(edit), [n_neurons] * n_layers, 1, 0)[0]
    return dict(zip(draw, (edit[n] for n in sorted(edit))))


def edit_settings() -> tuple[int, int]:
    """Number inputs: how many control draws and how many locality queries of each kind."""
    left, right = st.columns(2)
    controls = int(left.number_input("Control draws", 1, 500, 30, key="evidence_controls"))
    locality = int(right.number_input("Locality queries of each kind", 0, 50, 5, key="evidence_locality"))
    return controls, locality


def scorecard_table(card: Scorecard, meaning: Callable[[str], str]) -> pd.DataFrame:
    """One row per measure: its size, P(correct) before and after, the change beside the controls' mean change, their
    95% interval and the permutation p-value, accuracy before, after and under the controls, and what it means."""
    return pd.DataFrame(
        [
            {
                "measure": m.name,
                "queries": m.queries,
                "prompts": m.prompts,
                "P before": m.p_before,
                "P after": m.p_after,
                "change": m.test.effect,
                "control change": m.test.control_mean,
                "control low": m.test.low,
                "control high": m.test.high,
                "p-value": m.test.p_value,
                "accuracy before": m.accuracy_before,
                "accuracy after": m.accuracy_after,
                "accuracy, control": m.control_accuracy,
                "what it means": meaning(m.name),
            }
            for m in card.measures
        ]
    )


def control_figure(card: Scorecard) -> go.Figure:
    """Each measure's control changes as a box of points, the edit's change as a red diamond beside them."""
    fig = go.Figure()
    for m in card.measures:
        fig.add_box(x=m.test.controls, name=m.name, boxpoints="all", marker_color="#e8a33d", showlegend=False)
    fig.add_scatter(
        x=[m.test.effect for m in card.measures],
        y=[m.name for m in card.measures],
        mode="markers",
        marker={"symbol": "diamond", "size": 13, "color": "#d62728"},
        name="the edit",
    )
    fig.update_layout(
        height=90 + 55 * len(card.measures),
        margin={"l": 10, "r": 10, "t": 10, "b": 40},
        xaxis_title="change of P(correct): the edit (diamond) among its random controls (points)",
    )
    return fig


def show_scorecard(card: Scorecard, meaning: Callable[[str], str], key: str) -> None:
    """The scorecard's table, its controls' distribution and the legend."""
    number = st.column_config.NumberColumn
    views.table(
        scorecard_table(card, meaning),
        column_config={c: number(c, format="%.4f") for c in ("P before", "P after", "change", "control change")}
        | {"p-value": number("p-value", format="%.3f", help="(1 + draws at least as extreme) / (1 + draws)")},
        key=f"{key}-table",
    )
    st.plotly_chart(control_figure(card), width="stretch", key=f"{key}-controls")
    st.caption(CONTROL.format(k=card.controls))


def show_fluency(card: Scorecard, control: float) -> None:
    """The fluency row: the n-gram entropy of the answers before and after, and of the answer under the lab's random
    control (`control_edit`)."""
    f = card.fluency
    if f is None:
        raise ValueError("show_fluency needs a scorecard computed with its fluency (with_fluency=True)")
    st.markdown(f"**fluency**: {FLUENCY}.")
    cols = st.columns(3)
    cols[0].metric("n-gram entropy, unedited", f"{f.entropy_before:.3f}")
    cols[1].metric("n-gram entropy, edited", f"{f.entropy_after:.3f}", f"{f.entropy_after - f.entropy_before:+.3f}")
    cols[2].metric("n-gram entropy, random control", f"{control:.3f}", f"{control - f.entropy_before:+.3f}")


def dose_figure(dose: DoseResponse, band: DoseResponse) -> go.Figure:
    """P(correct) against the multiplier: one line per neuron set, the controls' 5-95% band and mean, and each set's
    flip points as dotted lines."""
    x = dose.multipliers
    low, mean, high = np.percentile(band.p_correct, [5, 50, 95], axis=0)  # (points,) each
    fig = go.Figure()
    fig.add_scatter(x=x, y=high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
    fig.add_scatter(
        x=x,
        y=low,
        mode="lines",
        line={"width": 0},
        fill="tonexty",
        fillcolor="rgba(232,163,61,0.3)",
        name=f"controls, 5-95% of {len(band.names)} draws",
    )
    fig.add_scatter(x=x, y=mean, mode="lines", line={"dash": "dash", "color": "#e8a33d"}, name="controls, median")
    for name, p in zip(dose.names, dose.p_correct):
        fig.add_scatter(
            x=x, y=p, mode="lines+markers", name=views.plain(name), line={"width": 3 if name == SELECTED else 1.5}
        )
    for name, below, above in zip(dose.names, dose.flip_below, dose.flip_above):
        for flip in (below, above):
            if np.isfinite(flip):
                fig.add_vline(x=flip, line_dash="dot", annotation_text=views.plain(f"{name} flips"))
    fig.update_layout(
        height=380,
        margin={"l": 40, "r": 10, "t": 20, "b": 40},
        xaxis_title="multiplier of f (0 suppresses, 1 leaves, above 1 boosts, below 0 flips its sign)",
        yaxis_title="P(correct), renormalised",
    )
    return fig


def flips_table(dose: DoseResponse) -> pd.DataFrame:
    """Per neuron set: its size and the multipliers nearest 1 at which the answer flips."""
    return dose.flips().rename(columns={"flip_below": "flips below 1 at", "flip_above": "flips above 1 at"})


def effects_table(effects: NeuronEffects) -> pd.DataFrame:
    """Per neuron, the largest |change| first: P(correct) with it alone edited and the change."""
    frame = effects.table()
    return frame.rename(columns={"p_alone": "P, this neuron alone", "change": "change alone"})


def candidates(lab: LabRun, query: Query, edit: dict[Neuron, float]) -> dict[str, tuple[Neuron, ...]]:
    """The neuron sets the evidence can measure: the lab's selection, then each method's QR neurons of a stored query
    (methods without any left out), by the paper's names."""
    stored = {METHOD_NAMES[m]: tuple(lab.neurons(query.id, m)) for m in lab.qr} if query.id in lab.queries else {}
    return {SELECTION: tuple(sorted(edit)), **{k: v for k, v in stored.items() if v}}


def show(name: str, run: views.Run | None, query: Query, edit: dict[Neuron, float], mult: float) -> None:
    """The evidence of the lab's edit, measured on the button: its scorecard, its dose-response and each neuron's own
    effect."""
    st.subheader("Evidence that the edit is real")
    st.caption(
        "Measured as knowledge-editing work (EasyEdit) measures an edit: "
        + "; ".join(f"**{k}**: {v}" for k, v in MEANINGS.items())
        + ". Each beside matched random controls."
    )
    if run is None:
        st.info("The evidence asks the run's queries for locality: pick a run in the sidebar.")
        return
    lab = state.lab_run(run.name)
    whose = candidates(lab, query, edit)
    pick = st.selectbox(
        "Neurons measured",
        list(whose),
        key="evidence_whose",
        help="The selection above, or a method's QR neurons of this query, scaled by the selection's multiplier.",
    )
    neurons = whose[pick]
    if not neurons:
        st.info("Select neurons to edit to measure their evidence.")
        return
    if pick == SELECTION and len(set(edit.values())) > 1:
        st.info(
            "The evidence measures one multiplier for every selected neuron: press *All follow the selection's "
            "multiplier* above to measure this selection."
        )
        return
    controls, locality = edit_settings()
    controlled = ControlledEdit(mult, controls, 0)
    asked = (name, run.name, query, neurons, controlled, locality)
    if st.button("Measure evidence", type="primary", help="Forward passes of the edit and every control draw."):
        st.session_state[EVIDENCE_FOR] = asked
    if st.session_state.get(EVIDENCE_FOR) != asked:
        st.caption(
            f"*Measure evidence* runs the edit and {controls} control draws on the query's prompts, "
            f"{locality} + {locality} locality queries and a sweep of multipliers: seconds to minutes."
        )
        return
    with views.inline_errors():
        card = state.scorecard(name, run.name, query, neurons, controlled, locality)
        show_scorecard(card, MEANINGS.__getitem__, "evidence")
        control = state.answer(
            name, query.question, state.edit_key(list(control_edit(name, dict.fromkeys(neurons, mult))), mult)
        )
        show_fluency(card, ngram_entropy(control))
        st.markdown("**Dose-response**: P(correct) as the multiplier moves, beside the controls' band.")
        sets = {SELECTED: list(neurons), **{k: list(v) for k, v in whose.items() if k != SELECTION}}
        dose, band = state.sweeps(
            name, run.name, query, tuple((k, tuple(v)) for k, v in sets.items()), neurons, controlled
        )
        st.plotly_chart(dose_figure(dose, band), width="stretch", key="dose")
        views.table(flips_table(dose), key="flips")
        st.caption(
            "The answer flips where the mean margin (P(correct) minus the best other option) changes sign; "
            "empty: not within the sweep."
        )
        effects = state.neuron_effects(name, run.name, query, neurons, mult)
        st.markdown(
            f"**Per-neuron effects**: each measured neuron alone x {mult:g}. P(correct) {effects.p_before:.4f} "
            f"unedited, {effects.p_all:.4f} with all {len(neurons)} together."
        )
        views.table(effects_table(effects), key="effects")


def _turns(streams: list[Iterator[str]], places: list, texts: list[str]) -> list[str]:
    """Read the streams in turns, each piece added to its text and its placeholder redrawn; the texts at the end."""
    live = list(range(len(streams)))
    while live:
        for i in list(live):
            piece = next(streams[i], None)
            if piece is None:
                live.remove(i)
                continue
            texts[i] += piece
            places[i].markdown(views.md(texts[i]) + " ▌")
    for place, text in zip(places, texts):
        place.markdown(views.md(text))
    return texts


def show_generation(name: str, question: str, edit: dict[Neuron, float]) -> None:
    """Free-form greedy answers to the plain question, unedited and edited side by side, streamed token by token with
    the same decoding; the control's (random neurons, same layers and count, same multipliers) on request."""
    key = state.edit_key(list(edit), 1.0, edit)
    done = st.session_state.setdefault(GENERATED, {})
    asked = (name, question, key)
    left, right = st.columns(2)
    go_plain = left.button("Generate free-form answers", help="Greedy decoding of the question without options.")
    go_control = right.button("Generate the control's answer", disabled=not edit)
    columns = st.columns(3)
    titles = ("Unedited", "Edited", "Control: random neurons, same layers")
    shown = done.get(asked, [])
    wanted = 3 if go_control else 2 if go_plain else len(shown)
    if not wanted:
        return
    places = []
    for column, title, i in zip(columns, titles, range(wanted)):
        column.markdown(f"**{title}**")
        places.append(column.empty())
    control = control_edit(name, edit)
    control = state.edit_key(list(control), 1.0, control)
    keys = [(), key, control][len(shown) : wanted]
    texts = _turns([state.stream_answer(name, question, k) for k in keys], places[len(shown) :], [""] * len(keys))
    for place, text in zip(places, shown):
        place.markdown(views.md(text))
    done[asked] = [*shown, *texts]
    st.caption("Same decoding for each: greedy, up to 48 new tokens, the model's chat template.")


GROUP_SOURCES = ("qr", "top")
"""Where a group edit's neurons come from: its QR neurons' union, or the heatmap's strongest cells."""
GROUP_EDITS = {"Suppress the group's neurons (x 0)": 0.0, "Boost the group's neurons (x 2)": 2.0}
GROUP_EDIT_FOR = "group_edit_for"
"""Session key: the group edit asked for by its button."""


def group_meaning(group: str) -> Callable[[str], str]:
    """What a group edit's measure means: the held-out queries of the edited group or of another one."""
    return lambda g: f"held-out queries of {views.group_label(g)}" + (" (the edited group)" if g == group else "")


def show_group_edit(run: views.Run, group: str, heatmap: np.ndarray, first_layer: int) -> None:
    """One click edits the group's neurons (its QR neurons' union without its held-out queries, or the top-k cells of
    its `heatmap`, whose row 0 is layer `first_layer`) and shows P(correct) and accuracy per group on held-out queries
    beside matched random controls: the edited group should move and the others stay."""
    st.subheader(f"Edit the group: {views.md(views.group_label(group))}")
    if unavailable := run.model_unavailable():
        st.info(f"Editing needs the run's model: {unavailable}")
        return
    left, middle, right = st.columns([3, 1, 1])
    source = left.radio(
        "Neurons",
        GROUP_SOURCES,
        horizontal=True,
        key="group_source",
        format_func={
            "qr": "its QR neurons' union (held-out queries left out)",
            "top": "the heatmap's strongest cells",
        }.__getitem__,
    )
    k = int(middle.number_input("Top cells", 1, 500, 20, key="group_top", disabled=source == "qr"))
    controls = int(right.number_input("Control draws", 1, 500, 20, key="group_controls"))
    neurons = None
    if source == "top":
        cells = top_neurons(np.where(heatmap > 0, heatmap, 0), k)
        neurons = tuple((first_layer + l, n) for l, n, score in cells if score > 0)
        if not neurons:
            st.info("The group's map shows no positive cell in these layers.")
            return
    columns = st.columns(len(GROUP_EDITS))
    for column, (label, multiplier) in zip(columns, GROUP_EDITS.items()):
        if column.button(label, key=f"group-edit-{multiplier:g}"):
            st.session_state[GROUP_EDIT_FOR] = (run.name, group, neurons, ControlledEdit(multiplier, controls, 0))
    asked = st.session_state.get(GROUP_EDIT_FOR)
    if asked is None or asked[:3] != (run.name, group, neurons) or asked[3].controls != controls:
        st.caption(
            "Every fifth query of each group is held out (as in Table 7); the edit is measured on those of every "
            "group. It costs forward passes of the edit and each control draw: seconds to minutes."
        )
        return
    with views.inline_errors():
        card = state.group_card(run.model, run.name, group, neurons, asked[3])
        st.markdown(
            f"**{views.md(card.edited)}**: {len(card.neurons)} neurons x {card.multiplier:g}; P(correct) and "
            "accuracy per group on its held-out queries."
        )
        show_scorecard(card, group_meaning(group), "group-edit")
