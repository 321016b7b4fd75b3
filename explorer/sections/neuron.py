"""Neuron card (?neuron=L:I): one neuron of the run, with its vocabulary projection, the queries whose cluster holds
it, its NA per group, the queries that make it fire and its activation on every token of a prompt (`firing`)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import firing, lab_edit, state, views
from qrcore import store
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses

# Tokens shown at each end of the vocabulary projection.
TOKENS = 10

st.title("Neuron card")
run = views.require_run()
unavailable = run.model_unavailable()
if "neuron" not in st.session_state and "neuron" not in st.query_params:
    common = state.read(run_analyses.common_neurons, run.id)
    first = common if not common.empty else state.read(store.qr_neurons, run.id)
    st.session_state["neuron"] = (
        views.neuron_label((int(first["layer"].iloc[0]), int(first["neuron"].iloc[0]))) if not first.empty else "0:0"
    )
text = views.synced(st.text_input, "Neuron (layer:index)", "neuron", help="For example 12:345; tables link here.")
try:
    layer, index = views.parse_neuron(text.strip())
    card = state.read(run_analyses.neuron_card, run.id, layer, index)
except QRNError as err:  # a subclass of ValueError
    st.error(views.md(err))
    st.stop()
except ValueError:
    st.error("The neuron is not written as layer:index; use whole numbers, e.g. 12:345.")
    st.stop()
neuron = (layer, index)
done = state.read(store.done_query_ids, run.id)
queries = {qid: q for qid, q in views.run_queries(run).items() if qid in done}

stability = state.stability(run.id).neurons
covered = stability.loc[
    (stability["layer"] == layer) & (stability["neuron"] == index) & (stability["of"] > 0), "stability"
]

cols = st.columns(6)
cols[0].metric("Cluster frequency", f"{card.frequency:.0%}", help=f"In {card.n_clusters} of the run's clusters.")
cols[1].metric("ICA (Eq. 6)", f"{card.ica:.3f}")
cols[2].metric("Common neuron", "yes" if card.is_common else "no")
cols[3].metric("QR neuron of queries", int((card.queries["qr_rank"] > 0).sum()))
cols[4].metric(
    "Stability",
    f"{covered.mean():.0%}" if len(covered) else "–",
    help=f"Over the {len(covered)} queries it is a QR neuron of, the mean share of perturbations in which it stays "
    f"one (per query in the table below). {views.STABILITY_HELP}",
)
cols[5].button(
    "Edit it in the lab",
    type="primary",
    on_click=lab_edit.edit_in_lab,
    args=(neuron,),
    disabled=unavailable is not None,
    help="Opens the query lab with this neuron alone as its edit set.",
)
if st.session_state.pop(lab_edit.GO_TO_LAB, False):
    st.switch_page("sections/lab.py")

left, right = st.columns(2)
left.subheader("Vocabulary projection (Table 5)")
if not unavailable:
    top = state.vocab_tokens(run.model, (neuron,), TOKENS)[neuron]
    bottom = state.vocab_tokens(run.model, (neuron,), TOKENS, largest=False)[neuron]
    left.dataframe(
        pd.DataFrame({"pushes up": [repr(t) for t in top], "pushes down": [repr(t) for t in bottom]}),
        width="stretch",
        hide_index=True,
    )
else:
    left.caption(f"No vocabulary projection: {unavailable}")
right.subheader("NA per group")
bars = card.groups.assign(group=card.groups["group_name"].map(views.group_label).map(views.plain))
right.plotly_chart(
    px.bar(
        bars,
        x="group",
        y="mean_na",
        hover_data=["clusters", "qr_neuron"],
        labels={"mean_na": "mean NA over the group's queries", "qr_neuron": "QR neuron of queries"},
    ).update_layout(height=280, margin={"l": 40, "r": 10, "t": 10, "b": 40}),
    width="stretch",
    key="na",
)

st.subheader("Queries whose coarse cluster holds it")
table = views.with_stability(
    card.queries.assign(
        question=card.queries["query_id"].map({qid: q.question for qid, q in queries.items()}).fillna(""),
        layer=layer,
        neuron=index,
    ),
    run,
).drop(columns=["layer", "neuron"])
views.table(
    table,
    column_config={
        "na": st.column_config.NumberColumn("NA", format="%.3f"),
        "naica": st.column_config.NumberColumn("NAICA", format="%.3f"),
        "qr_rank": st.column_config.NumberColumn("QR rank", help="Its rank among the query's QR neurons; 0: not one."),
    },
)

firing.top_queries(run, neuron, queries, card, unavailable)
firing.token_view(run, neuron, queries, unavailable)
