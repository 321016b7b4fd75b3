"""Query lab (Sec. 5): a query's answer probabilities, its QR neurons, and what scaling them does, beside a control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import lab_edit, lab_evidence, lab_scoring, state, views
from qrcore import store
from qrcore.data.queries import Query, make_query
from qrcore.editing.readable import OptionProbs, correct_share
from qrcore.errors import QRNError

SOURCES = ("dataset", "custom")
# How many of its best QR neurons are selected when a query is opened.
DEFAULT_NEURONS = 10
CUSTOM = {"q_text": "What is the capital of France?", "q_options": "Paris\nLondon\nBerlin\nMadrid", "q_answer": "Paris"}

st.title("Query lab")
name = views.model()
if message := state.missing(name):
    st.error(f"The query lab runs {views.md(name)} live, and it is not installed here: {message}")
    st.stop()
run = views.pick_run()
source = views.synced(
    st.radio,
    "Question",
    "source",
    options=SOURCES if run else SOURCES[1:],
    horizontal=True,
    format_func={"dataset": "from the run's dataset", "custom": "my own"}.__getitem__,
)
from_run = run if source == "dataset" else None
"""The run whose dataset the question comes from; None for the user's own question."""


def custom_query() -> Query:
    """The question typed in, kept in the link as ?q_text=&q_options=&q_answer= (QRNError naming what is wrong)."""
    question = views.synced(st.text_input, "Question", "q_text", value=CUSTOM["q_text"])
    left, right = st.columns(2)
    options = views.synced(left.text_area, "Options, one per line", "q_options", value=CUSTOM["q_options"], height=130)
    answer = views.synced(right.text_input, "Correct answer (one of the options)", "q_answer", value=CUSTOM["q_answer"])
    return make_query(question, [o for o in options.splitlines() if o.strip()], answer)


def qr_table(query: Query) -> pd.DataFrame:
    """The query's QR neurons: from the run for a dataset query, scored against the run for a custom one."""
    if from_run is not None:
        lab_scoring.run_query_consistency(from_run, query.id)
        qr = state.read(store.qr_neurons, from_run.id, "qrnca", query.id)[["rank", "layer", "neuron", "score"]]
        return views.with_stability(qr, from_run, query.id)
    done = st.session_state.setdefault("attributed", set())
    if st.button("Run QRNCA", type="primary", help="Attribute every neuron (integrated gradients, Eq. 5)."):
        done.add(query)
    if query not in done:
        st.info(
            "Press *Run QRNCA* to find this question's QR neurons against the sidebar's run, or add neurons by "
            "layer and index below."
        )
        return pd.DataFrame(columns=["rank", "layer", "neuron", "score"])
    return lab_scoring.custom_qr_table(run, name, query)


def default_labels(table: pd.DataFrame) -> list[str]:
    """The neurons selected when a query is opened: its best QR neurons."""
    return [views.neuron_label(n) for n in zip(table["layer"], table["neuron"])][:DEFAULT_NEURONS]


def choose_neurons(query: Query, table: pd.DataFrame, n_layers: int, n_neurons: int) -> list[tuple[int, int]]:
    """Multiselect of neurons from the table or added by layer and index; synced in the link as ?neurons=3:17,..."""

    def valid(label: str) -> bool:
        try:
            layer, neuron = views.parse_neuron(label)
        except ValueError:
            return False
        return 0 <= layer < n_layers and 0 <= neuron < n_neurons

    opened = f"{source}:{hash(query)}:{len(table)}"
    if st.session_state.get("lab_opened") != opened:
        if "lab_opened" in st.session_state or "neurons" not in st.query_params:
            st.session_state["neurons"] = default_labels(table)
        st.session_state["lab_opened"] = opened
    if lab_edit.ADDED in st.session_state:  # a neuron card's neuron, to be edited alone
        st.session_state["neurons"] = lab_edit.take_added()
    left, middle, right = st.columns(3, vertical_alignment="bottom")
    layer = int(left.number_input(f"Layer (0-{n_layers - 1})", min_value=0, step=1, key="add_layer"))
    index = int(middle.number_input(f"Neuron index (0-{n_neurons - 1})", min_value=0, step=1, key="add_index"))
    if right.button("Add neuron"):
        try:
            state.check(name, [(layer, index)])
            st.session_state["neurons"] = [*st.session_state.get("neurons", []), views.neuron_label((layer, index))]
        except QRNError as err:
            st.error(str(err))
    linked = [] if "neurons" in st.session_state else st.query_params.get("neurons", "").split(",")
    table_labels = [views.neuron_label(n) for n in zip(table["layer"], table["neuron"])]
    options = [n for n in dict.fromkeys([*table_labels, *st.session_state.get("neurons", []), *linked]) if valid(n)]
    labels = views.synced(
        st.multiselect,
        "Neurons to edit",
        "neurons",
        options=options,
        among=f"a list of {name}'s neurons as layer:index (layers 0-{n_layers - 1}, neurons 0-{n_neurons - 1})",
        parse=lambda s: [n for n in s.split(",") if n],
        dump=",".join,
        default=[n for n in default_labels(table) if n in options],
    )
    return [views.parse_neuron(label) for label in labels]


def reset(defaults: list[str]) -> None:
    """Back to the query's default neurons, unedited."""
    st.session_state["neurons"] = defaults
    st.session_state["mult"] = 1.0
    lab_edit.clear()


def show_probs(query: Query, edit: dict[tuple[int, int], float]) -> None:
    """Answer probabilities unedited, under the edit and under the same edit of random neurons with the same layers
    and count (`lab_evidence.control_edit`): renormalised over the option letters, each beside its raw share of the
    whole vocabulary."""
    prompts = state.prompts(name, query)
    control = lab_evidence.control_edit(name, edit)
    raw = {
        "original": state.option_probs(name, query),
        "edited": state.option_probs(name, query, state.edit_key(list(edit), 1.0, edit)),
        "control": state.option_probs(name, query, state.edit_key(list(control), 1.0, control)),
    }  # each (prompts, options)
    readable = {k: OptionProbs.of(prompts[0], p[0]) for k, p in raw.items()}
    factors = set(edit.values())
    mult = f"x {factors.pop():g}" if len(factors) == 1 else "x their own multipliers"
    correct = {k: r.probability[r.correct] for k, r in readable.items()}
    share = {k: r.vocabulary_share[r.correct] for k, r in readable.items()}
    cols = st.columns(3)
    labels = (
        "P(correct), template 1",
        f"Edited ({len(edit)} neurons {mult})",
        f"Control ({len(control)} random neurons, same layers)",
    )
    for col, label, k in zip(cols, labels, readable):
        delta = None if k == "original" else f"{correct[k] - correct['original']:+.3g}"
        col.metric(label, f"{correct[k]:.4g}", delta, help="The correct letter's probability among the options.")
        col.caption(f"raw share of the vocabulary: {share[k]:.4g} (the options hold {readable[k].options_share:.3g})")
    options = [
        views.plain(f"{l}. {t}" if t else l) for l, t in zip(readable["original"].letters, readable["original"].options)
    ]
    options[prompts[0].correct] += " ✓"
    long = pd.DataFrame(
        [(k, o, p, s) for k, r in readable.items() for o, p, s in zip(options, r.probability, r.vocabulary_share)],
        columns=["setting", "option", "probability over the options", "raw share of the vocabulary"],
    )
    fig = px.bar(
        long,
        x="option",
        y="probability over the options",
        color="setting",
        barmode="group",
        hover_data=["raw share of the vocabulary"],
        color_discrete_sequence=["#9aa5b1", "#2f6fdf", "#e8a33d"],
    )
    fig.update_layout(height=320, margin={"l": 40, "r": 10, "t": 10, "b": 40})
    st.plotly_chart(fig, width="stretch", key="probs")
    views.table(long, key="probs-table")
    means = {k: float(correct_share(p, np.array([q.correct for q in prompts])).mean()) for k, p in raw.items()}
    st.caption(
        "Probabilities are the option letters' renormalised over the options (they add up to 1); the raw share is the "
        "letter token's probability among the whole vocabulary. **Control**: the same multipliers applied to as many "
        "random neurons with the same layers (seeded), so a change the control shows too is not the selection's doing"
        + (f" ({', '.join(map(views.neuron_label, control))})" if control else "")
        + ". Mean P(correct) over the query's templates: "
        + " · ".join(f"{k} {v:.4g}" for k, v in means.items())
    )


try:
    if from_run is not None:
        store.require_model(state.read(store.run_info, from_run.id), name, state.model(name).fingerprint)
        query = views.pick_query(views.run_queries(from_run))
    else:
        query = custom_query()
    state.prompts(name, query)
except QRNError as err:
    st.error(views.md(err))
    st.stop()

n_layers, n_neurons = state.shape(name)
st.subheader("QR neurons")
table = qr_table(query)
if not table.empty:  # cards show a run's neurons: those of a run that this model computed
    views.neuron_table(
        table,
        run if run is not None and run.model_unavailable() is None else None,
        column_config={"naica_rank": st.column_config.NumberColumn("NAICA rank", help=lab_scoring.NAICA_RANK)},
    )
st.subheader("Edit")
neurons = choose_neurons(query, table, n_layers, n_neurons)
left, right = st.columns([4, 1], vertical_alignment="bottom")
mult = views.synced(
    left.slider,
    "Multiplier of the selected neurons' activation (0 suppresses, 1 leaves, 2 boosts)",
    "mult",
    min_value=0.0,
    max_value=4.0,
    step=0.1,
    value=1.0,
    parse=float,
    valid=lambda v: 0.0 <= v <= 4.0,
    among="a multiplier from 0 to 4",
    dump=lambda v: f"{v:g}",
)
right.button("Reset", on_click=reset, args=(default_labels(table),))
edit = lab_edit.per_neuron(neurons, mult)
with views.inline_errors(stop=True):
    show_probs(query, edit)
lab_edit.take_away(name, edit, [from_run.name, query.id] if from_run else ["own-question"])
lab_evidence.show(name, run, query, edit, mult)
st.subheader("Free-form answer")
lab_evidence.show_generation(name, query.question, edit)
