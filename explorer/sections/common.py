"""Common neurons (Sec. 4.4) and, per query, why each of its high-NA neurons is or is not a QR neuron."""

from __future__ import annotations

import streamlit as st

from explorer import state, thresholds, views
from qrcore import store
from qrcore.evaluation import run_analyses

st.title("Common neurons")
run = views.require_run()
at = thresholds.controls(run)
common = state.read(run_analyses.common_neurons, run.id) if at is None else at.common
u = state.read(store.run_info, run.id).settings.qrnca.u if at is None else at.settings.u
st.caption(
    f"Neurons in more than u = {u:.0%} of the run's clusters (one coarse cluster per query). "
    "They fire for almost any query, so QRNCA drops them from every query's QR neurons."
)
views.neuron_table(
    common,
    run,
    column_config={
        "frequency": st.column_config.ProgressColumn("frequency", format="%.2f", min_value=0.0, max_value=1.0)
    },
)

st.subheader("Why a query's neurons are (not) QR neurons")
query = views.pick_query(views.run_queries(run))
with views.inline_errors():
    rows = (
        state.read(run_analyses.query_neurons, run.id, query.id) if at is None else thresholds.query_rows(at, query.id)
    )
    rows = rows.sort_values("na", ascending=False, ignore_index=True)
    if at is None:  # the stored rows (with IG); stability is of the run's own QR neurons, not of those at others
        rows = views.with_stability(rows.assign(ig=rows["ig"].map(views.ig_text)), run, query.id)
    kept = int(rows["kept"].sum())
    st.caption(
        f"Every stored neuron of {views.md(repr(query.id))} (its coarse cluster and NA above the storage "
        f"floor), highest NA first; NAICA = NA x ICA. {kept} kept as QR neurons."
    )
    views.neuron_table(
        rows,
        run,
        column_config={
            "kept": st.column_config.CheckboxColumn("QR neuron"),
            "in_cluster": st.column_config.CheckboxColumn("cluster"),
            "is_common": st.column_config.CheckboxColumn("common"),
            "na": st.column_config.NumberColumn("NA", format="%.3f"),
            "ica": st.column_config.NumberColumn("ICA", format="%.3f"),
            "naica": st.column_config.NumberColumn("NAICA", format="%.3f"),
            "reason": st.column_config.TextColumn("why", width="medium"),
        },
    )
