"""The query lab's QRNCA for a question of one's own, scored against the sidebar's run (|C| + 1 clusters), and the
template consistency of the query on view.

A question of one's own is attributed with the model's live rule (`qrcore.attribution.live_rule`) and, where the
hardware and the model's measured agreement allow, bfloat16 products (`qrcore.attribution.precision.choose_bf16`); a
button recomputes it exactly (the authors' rule, float32). Layer blocks come from the top down, each shown as a
partial result, until the full QRNCA replaces them."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from explorer import state, views
from explorer.figures import bin_heatmap, heatmap_figure
from qrcore import store
from qrcore.attribution.live_rule import AUTHORS, label, live_rule
from qrcore.attribution.results import PartialAttribution, QueryAttribution
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.selection.consistency import dense_consistency
from qrcore.selection.custom import score_against_run
from qrcore.selection.qrnca import query_na
from qrcore.selection.topk import top_neurons
from qrcore.settings import GRADIENT_X_ACTIVATION, AttributionSettings, RunSettings

COLUMNS = ["rank", "layer", "neuron", "score"]
NAICA_RANK = "Its rank by NA x ICA among all neurons, before the common neurons among the top v were removed."
TOP_NA = 20
"""Neurons listed by NA when a question cannot be scored against a run."""
EXACT = "exact_attribution"
"""Session key: the custom questions the user asked to recompute with the authors' rule in float32."""
RECOMPUTE = "Recompute with the authors' rule"


def custom_qr_table(run: views.Run | None, name: str, query: Query) -> pd.DataFrame:
    """The question's QR neurons scored against `run`, or its top NA when there is no run of the app's model.

    A gradient x activation preview (one forward and one backward per template) shows first and is replaced when the
    integrated gradients finish."""
    scored = run if run is not None and run.model_unavailable() is None else None  # the run it is scored against
    settings = state.read(store.run_info, scored.id).settings if scored else RunSettings()
    live, bf16 = live_setup(name, query)
    placeholder = st.empty()
    with placeholder.container():
        show_preview(
            state.attribution(name, query, replace(settings, attribution=GRADIENT_X_ACTIVATION)), settings, live
        )
    result = state.attribution_as_it_comes(
        name, query, replace(settings, attribution=live), bf16, lambda part: show_partial(placeholder, part, settings)
    )
    placeholder.empty()
    timing = f"{result.seconds:.1f} s with {label(live)}; mean P(correct) {result.correct_prob:.3f}"
    if scored is None:
        top = pd.DataFrame(top_neurons(query_na(result.ig, settings.qrnca).na, TOP_NA), columns=COLUMNS[1:])
        st.caption(
            f"Top neurons by NA ({timing}). There is no run of {views.md(name)} to score the question against, "
            "so this is NA without ICA or common neurons; pick or compute a run of the app's model for QRNCA."
        )
        return top.assign(rank=range(1, len(top) + 1))[COLUMNS]
    counts, n_clusters = state.read(store.cluster_counts, scored.id)
    s = settings.qrnca
    rows = score_against_run(result, counts, n_clusters, s)
    kept = rows.loc[rows["kept"]].sort_values("naica_rank")
    dropped = int((rows["is_common"] & (rows["naica_rank"] >= 1) & (rows["naica_rank"] <= s.v)).sum())
    st.caption(
        f"QRNCA against run {views.md(scored.name)} ({timing}): its {n_clusters} clusters and this question's, "
        f"{n_clusters + 1} in all, give ICA (Eq. 6) and the common neurons (in more than u = {s.u:g} of them); "
        f"the QR neurons are the top {s.v} by NA x ICA minus the common ones among them ({dropped}): "
        f"{len(kept)} QR neurons."
    )
    consistency_line(dense_consistency(query.id, result.ig, s.t), s.t)
    with st.expander("Every stored neuron of the question and why it is (not) a QR neuron"):
        st.dataframe(rows.drop(columns="query_id"), hide_index=True, width="stretch")
    ranked = kept.assign(rank=range(1, len(kept) + 1), score=kept["naica"])
    return ranked[[*COLUMNS, "naica_rank"]].reset_index(drop=True)


def live_setup(name: str, query: Query) -> tuple[AttributionSettings, bool]:
    """The rule and whether bfloat16 products attribute the question, each said in a caption with why; a button
    recomputes with the authors' rule in float32 where that is not what ran."""
    rule, bf16 = live_rule(name), state.bf16_choice(name)
    exact = st.session_state.setdefault(EXACT, set())
    if query not in exact and (not rule.is_authors or bf16.use):
        if st.button(RECOMPUTE, help=f"Integrated gradients with {label(AUTHORS)} in float32, as a run computes them."):
            exact.add(query)
    if query in exact:
        st.caption(
            f"Integration rule of Eq. 5: {label(AUTHORS)}, the authors' rule, in float32 products, as asked; "
            f"the live rule would be {rule.why}."
        )
        return AUTHORS, False
    st.caption(f"Integration rule of Eq. 5: {label(rule.settings)}. Chosen because: {rule.why}.")
    st.caption(f"Products: {bf16.why}.")
    return rule.settings, bf16.use


def show_partial(placeholder, part: PartialAttribution, settings: RunSettings) -> None:
    """In `placeholder`: the layers attributed so far as a heatmap of NA and their candidate neurons, marked partial."""
    layers, s = part.layers, settings.qrnca
    na = query_na(part.attribution.ig, s).na  # (layers, neurons), 0 below layers.start
    top = pd.DataFrame(top_neurons(na, TOP_NA), columns=COLUMNS[1:])
    with placeholder.container():
        st.caption(
            f"Partial result ({part.attribution.seconds:.1f} s): layers {layers.start}-{layers.stop - 1} of "
            f"{layers.stop} attributed, from the top down; the candidate neurons by NA over these layers, not yet "
            "QRNCA. The rest are running; leaving the page or changing the question stops them."
        )
        fig = heatmap_figure(bin_heatmap(na[layers.start :]), layers.start, title="NA of the layers so far (partial)")
        st.plotly_chart(fig, width="stretch")
        st.dataframe(top.assign(rank=range(1, len(top) + 1))[COLUMNS], hide_index=True, width="stretch")


def show_preview(preview: QueryAttribution, settings: RunSettings, live: AttributionSettings) -> None:
    """The preview's top neurons by NA, labelled as a preview."""
    top = pd.DataFrame(top_neurons(query_na(preview.ig, settings.qrnca).na, TOP_NA), columns=COLUMNS[1:])
    st.caption(
        f"Preview ({preview.seconds:.1f} s): top neurons by gradient x activation (f x dP/df, one forward and "
        f"one backward), not yet QRNCA. Integrated gradients ({label(live)}) are running, layer blocks from the top, "
        "and will replace it."
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
        table = state.read(run_analyses.template_consistency, run.id).set_index("query_id")
    except QRNError as err:
        st.error(str(err))
        return
    if query_id in table.index:
        consistency_line(table.loc[[query_id]].iloc[0], state.read(store.run_info, run.id).settings.qrnca.t)


def consistency_line(row: pd.Series, t: float) -> None:
    """One caption: how far the templates' clusters agree (a `qrcore.selection.consistency` row)."""
    sizes = ", ".join(str(int(n)) for n in row["template_sizes"])
    st.caption(
        f"Template consistency at t = {t:g}: the templates' clusters ({sizes} neurons) agree "
        f"{row['agreement']:.2f} (mean pairwise Jaccard); {row['in_all']:.0%} of the {int(row['cluster'])} "
        "cluster neurons are in every template's cluster."
    )
