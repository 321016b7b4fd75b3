"""The query lab's QRNCA for a question of one's own, scored against the sidebar's run (|C| + 1 clusters), and the
template consistency of the query on view."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from explorer import state, views
from qrcore import store
from qrcore.attribution.results import QueryAttribution
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.selection.consistency import dense_consistency
from qrcore.selection.custom import score_against_run
from qrcore.selection.qrnca import query_na
from qrcore.selection.topk import top_neurons
from qrcore.settings import GRADIENT_X_ACTIVATION, RunSettings

COLUMNS = ["rank", "layer", "neuron", "score"]
NAICA_RANK = "Its rank by NA x ICA among all neurons, before the common neurons among the top v were removed."
TOP_NA = 20
"""Neurons listed by NA when a question cannot be scored against a run."""


def custom_qr_table(run: views.Run | None, name: str, query: Query) -> pd.DataFrame:
    """The question's QR neurons scored against `run`, or its top NA when there is no run of the app's model.

    A gradient x activation preview (one forward and one backward per template) shows first and is replaced when the
    integrated gradients finish."""
    scorable = run is not None and run.model_unavailable() is None
    settings = state.read(store.run_info, run.id).settings if scorable else RunSettings()
    placeholder = st.empty()
    with placeholder.container():
        show_preview(state.attribution(name, query, replace(settings, attribution=GRADIENT_X_ACTIVATION)), settings)
    result = state.attribution(name, query, settings)
    placeholder.empty()
    timing = f"{result.seconds:.1f} s; mean P(correct) {result.correct_prob:.3f}"
    if not scorable:
        top = pd.DataFrame(top_neurons(query_na(result.ig, settings.qrnca).na, TOP_NA), columns=COLUMNS[1:])
        st.caption(
            f"Top neurons by NA ({timing}). There is no run of {views.md(name)} to score the question against, "
            "so this is NA without ICA or common neurons; pick or compute a run of the app's model for QRNCA."
        )
        return top.assign(rank=range(1, len(top) + 1))[COLUMNS]
    counts, n_clusters = state.read(store.read_cluster_counts, run.id)
    s = settings.qrnca
    rows = score_against_run(result, counts, n_clusters, s)
    kept = rows.loc[rows["kept"]].sort_values("naica_rank")
    dropped = int((rows["is_common"] & (rows["naica_rank"] >= 1) & (rows["naica_rank"] <= s.v)).sum())
    st.caption(
        f"QRNCA against run {views.md(run.name)} ({timing}): its {n_clusters} clusters and this question's, "
        f"{n_clusters + 1} in all, give ICA (Eq. 6) and the common neurons (in more than u = {s.u:g} of them); "
        f"the QR neurons are the top {s.v} by NA x ICA minus the common ones among them ({dropped}): "
        f"{len(kept)} QR neurons."
    )
    consistency_line(dense_consistency(query.id, result.ig, s.t), s.t)
    with st.expander("Every stored neuron of the question and why it is (not) a QR neuron"):
        st.dataframe(rows.drop(columns="query_id"), hide_index=True, width="stretch")
    ranked = kept.assign(rank=range(1, len(kept) + 1), score=kept["naica"])
    return ranked[[*COLUMNS, "naica_rank"]].reset_index(drop=True)


def show_preview(preview: QueryAttribution, settings: RunSettings) -> None:
    """The preview's top neurons by NA, labelled as a preview."""
    top = pd.DataFrame(top_neurons(query_na(preview.ig, settings.qrnca).na, TOP_NA), columns=COLUMNS[1:])
    st.caption(
        f"Preview ({preview.seconds:.1f} s): top neurons by gradient x activation (f x dP/df, one forward and "
        f"one backward), not yet QRNCA. Integrated gradients with m = {settings.attribution.steps} steps are "
        "running and will replace it."
    )
    st.dataframe(top.assign(rank=range(1, len(top) + 1))[COLUMNS], hide_index=True, width="stretch")


def run_query_consistency(run: views.Run, query_id: str) -> None:
    """The consistency line of one of the run's queries, or why there is none."""
    if not state.read(store.has_template_ig, run.id):
        st.caption(
            "Template consistency is not available for this run: it was stored without per-template IG "
            "(before store schema 2)."
        )
        return
    try:
        table = state.read(store.read_template_consistency, run.id).set_index("query_id")
    except QRNError as err:
        st.error(str(err))
        return
    if query_id in table.index:
        consistency_line(table.loc[query_id], state.read(store.run_info, run.id).settings.qrnca.t)


def consistency_line(row: pd.Series, t: float) -> None:
    """One caption: how far the templates' clusters agree (a `qrcore.selection.consistency` row)."""
    sizes = ", ".join(str(int(n)) for n in row["template_sizes"])
    st.caption(
        f"Template consistency at t = {t:g}: the templates' clusters ({sizes} neurons) agree "
        f"{row['agreement']:.2f} (mean pairwise Jaccard); {row['in_all']:.0%} of the {int(row['cluster'])} "
        "cluster neurons are in every template's cluster."
    )
