"""Methods (Sec. 5, Tables 4, 6, 7): QRNCA against the baselines, from the run's stored evaluations."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from qrcore import qrnca, store

import state
import views

# Explanations of the metrics the evaluations store; others are shown by their stored name.
METRICS = {
    "pcr": "PCR: |mean change of P(correct) of the group's queries| / |mean change of the other groups'| when the "
           "group's neurons are edited (Table 4). Higher is more query-specific.",
}

st.title("Methods")
run = views.require_run()
evaluations = state.read(store.evaluations, run.id)
if evaluations.empty:
    st.info(f"Run {run.name!r} has no evaluations yet. Compute them with `qrn evaluate --run {run.name}`; "
            "this page then shows PCR, flip rates and neuron-based prediction per method.")
    st.stop()

order = {m: i for i, m in enumerate(qrnca.METHODS)}
for (evaluation, metric), rows in evaluations.groupby(["evaluation", "metric"], sort=True):
    st.subheader(f"{evaluation} · {metric}")
    if metric in METRICS:
        st.caption(METRICS[metric])
    table = rows.pivot_table(index="method", columns="group_name", values="value", aggfunc="first")
    table = table.assign(mean=table.mean(axis=1)).sort_index(key=lambda idx: idx.map(lambda m: order.get(m, 99)))
    left, right = st.columns([2, 3])
    left.dataframe(table.style.format("{:.3f}").highlight_max(axis=0, color="#d6e4ff"), width="stretch")
    right.plotly_chart(px.bar(rows, x="group_name", y="value", color="method", barmode="group",
                              category_orders={"method": list(table.index)}, labels={"value": metric})
                       .update_layout(height=300, margin={"l": 40, "r": 10, "t": 10, "b": 40}),
                       width="stretch", key=f"{evaluation}-{metric}")
