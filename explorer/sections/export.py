"""Take it away: a neuron set of the run (a query's QR neurons, a group's, the common neurons) as JSON or CSV, at the
run's thresholds or the live ones. The query lab exports edits."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import state, thresholds, views
from qrcore import store
from qrcore.editing import edits
from qrcore.evaluation import run_analyses

SETS = {"query": "a query's QR neurons", "group": "a group's QR neurons", "common": "the common neurons"}

st.title("Take it away")
run = views.require_run()
at = thresholds.controls(run)
kind = views.synced(st.radio, "Neuron set", "set", options=list(SETS), format_func=SETS.__getitem__, horizontal=True)
qr = state.read(store.qr_neurons, run.id) if at is None else at.qr
if kind == "query":
    query = views.pick_query(views.run_queries(run))
    neurons = qr.loc[qr["query_id"] == query.id, ["layer", "neuron", "score"]]
    name, score, names = f"QR neurons of query {query.id}", "NAICA", ["query", query.id]
elif kind == "group":
    groups = state.read(store.heatmap_groups, run.id)
    group = views.synced(st.selectbox, "Group", "group", options=groups, among=f"a group of run {run.name}")
    members = {q.id for q in views.run_queries(run).values() if q.group == group}
    mine = qr.loc[qr["query_id"].isin(members)]
    neurons = (mine.groupby(["layer", "neuron"]).size() / max(len(members), 1)).rename("score").reset_index()
    name, score, names = (
        f"QR neurons of group {group}",
        "the share of the group's queries it is a QR neuron of",
        ["group", group],
    )
else:
    common = state.read(run_analyses.common_neurons, run.id) if at is None else at.common
    neurons = common.assign(score=common["frequency"])[["layer", "neuron", "score"]]
    name, score, names = "common neurons", "the share of all clusters that hold it", ["common"]
if at is not None:
    name += f" at t={at.settings.t:g}, u={at.settings.u:g}, v={at.settings.v}"
    names.append(f"t{at.settings.t:g}_u{at.settings.u:g}_v{at.settings.v}")
neurons = neurons.sort_values("score", ascending=False, ignore_index=True)

fingerprint, model = state.read(store.run_model, run.id)
meta = {"model": model, "model_fingerprint": fingerprint, "run": run.name, "set": name}
st.text(f"{name}: {len(neurons)} neurons of run {run.name} (model {model}); score: {score}.")
left, right, _ = st.columns([1, 1, 3])
views.download_buttons(
    (left, right), "Download", edits.NEURON_SET, meta, neurons, disabled=neurons.empty, names=[run.name, *names]
)
st.caption(
    "Load it in Python with `qrcore.editing.edits.load_edit(path, multiplier=0.0)` (suppress) or `multiplier=2.0` "
    "(boost) and apply it with `qrcore.editing.scaling.edited(lm, edit)`; the query lab loads it too."
)
views.neuron_table(
    pd.DataFrame(neurons),
    run,
    column_config={"score": st.column_config.NumberColumn("score", format="%.3f")},
)
