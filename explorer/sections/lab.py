"""Query lab (Sec. 5): a query's answer probabilities, its QR neurons, and what scaling them does, beside a control."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import lab_edit, lab_scoring, state, views
from qrcore import store
from qrcore.data.queries import Query, make_query
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


def custom_query() -> Query:
    """The question typed in, kept in the link as ?q_text=&q_options=&q_answer= (QRNError naming what is wrong)."""
    question = views.synced(st.text_input, "Question", "q_text", value=CUSTOM["q_text"])
    left, right = st.columns(2)
    options = views.synced(left.text_area, "Options, one per line", "q_options", value=CUSTOM["q_options"], height=130)
    answer = views.synced(right.text_input, "Correct answer (one of the options)", "q_answer", value=CUSTOM["q_answer"])
    return make_query(question, [o for o in options.splitlines() if o.strip()], answer)


def qr_table(query: Query) -> pd.DataFrame:
    """The query's QR neurons: from the run for a dataset query, scored against the run for a custom one."""
    if source == "dataset":
        lab_scoring.run_query_consistency(run, query.id)
        qr = state.read(store.read_qr_neurons, run.id, "qrnca", query.id)[["rank", "layer", "neuron", "score"]]
        return views.with_stability(qr, run, query.id)
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


def show_probs(query: Query, edit: dict[tuple[int, int], float], n_neurons: int) -> None:
    """Answer probabilities unedited, under the edit and under the same edit of a seeded random control set (each
    control neuron takes the multiplier of its counterpart)."""
    prompt = state.prompts(name, query)[0]
    control = views.control_neurons(list(edit), n_neurons)
    control_edit = dict(zip(control, (edit[n] for n in sorted(edit))))
    probs = {
        "original": state.option_probs(name, query),
        "edited": state.option_probs(name, query, state.edit_key(list(edit), 1.0, edit)),
        "control": state.option_probs(name, query, state.edit_key(control, 1.0, control_edit)),
    }
    factors = set(edit.values())
    mult = f"x {factors.pop():g}" if len(factors) == 1 else "x their own multipliers"
    correct = {k: float(p[0, prompt.correct]) for k, p in probs.items()}
    cols = st.columns(3)
    cols[0].metric("P(correct), template 1", f"{correct['original']:.4g}")
    cols[1].metric(
        f"Edited ({len(edit)} neurons {mult})",
        f"{correct['edited']:.4g}",
        f"{correct['edited'] - correct['original']:+.3g}",
    )
    cols[2].metric(
        f"Control ({len(control)} random neurons, same layers)",
        f"{correct['control']:.4g}",
        f"{correct['control'] - correct['original']:+.3g}",
    )
    options = [
        views.plain(f"{l}. {t}" if t else l)
        for l, t in zip(prompt.letters, prompt.options or [""] * len(prompt.letters))
    ]
    options[prompt.correct] += " ✓"
    long = pd.DataFrame(
        [(k, o, float(v)) for k, p in probs.items() for o, v in zip(options, p[0])],
        columns=["setting", "option", "probability"],
    )
    fig = px.bar(
        long,
        x="option",
        y="probability",
        color="setting",
        barmode="group",
        color_discrete_sequence=["#9aa5b1", "#2f6fdf", "#e8a33d"],
    )
    fig.update_layout(height=320, margin={"l": 40, "r": 10, "t": 10, "b": 40})
    st.plotly_chart(fig, width="stretch", key="probs")
    rows = [p.correct for p in state.prompts(name, query)]
    means = {k: float(p[range(len(rows)), rows].mean()) for k, p in probs.items()}
    st.caption(
        "Mean P(correct) over the query's templates: "
        + " · ".join(f"{k} {v:.4g}" for k, v in means.items())
        + (f" · control neurons: {', '.join(map(views.neuron_label, control))}" if control else "")
    )


def show_answers(query: Query, edit: state.EditKey) -> None:
    """Free-form greedy answers to the plain question, unedited and edited, on request."""
    asked = (query.question, edit)
    if st.button("Generate free-form answers", help="Greedy decoding of the question without options."):
        st.session_state["answers_for"] = asked
    if st.session_state.get("answers_for") != asked:
        return
    left, right = st.columns(2)
    with st.spinner("Generating…"):
        left.markdown("**Unedited**")
        left.markdown(views.md(state.answer(name, query.question)))
        right.markdown("**Edited**")
        right.markdown(views.md(state.answer(name, query.question, edit)))


try:
    if source == "dataset":
        store.require_model(state.read(store.run_info, run.id), name, state.model(name).fingerprint)
        query = views.pick_query(views.run_queries(run))
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
show_probs(query, edit, n_neurons)
lab_edit.take_away(name, edit, [run.name, query.id] if source == "dataset" else ["own-question"])
st.subheader("Free-form answer")
show_answers(query, state.edit_key(neurons, mult, edit))
