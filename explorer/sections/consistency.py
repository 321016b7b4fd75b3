"""Template consistency: per query, how far its prompt templates agree on its coarse cluster; per group, the spread."""

from __future__ import annotations

from collections.abc import Sequence
import shlex

import numpy as np
import plotly.express as px
import streamlit as st

from explorer import state, thresholds, views
from qrcore import store
from qrcore.evaluation import run_analyses
from qrcore.selection.live import template_above


def sizes_text(sizes: Sequence[int]) -> str:
    """A query's coarse-cluster size per template, as '12 / 9 / 14'."""
    return " / ".join(map(str, sizes))


st.title("Template consistency")
run = views.require_run()
st.subheader("Stability of the QR neurons")
st.caption(
    "How much a query's QR neurons move when what should not matter changes: each template left out, and the runs "
    "named RUN:seed1 (another option shuffle) and RUN:gauss_legendre-32 (a finer integral) where stored. Per "
    "perturbation and group: the mean Jaccard index of the queries' clusters and QR neurons against the run's, "
    "and the share of its QR neurons that stay (1: nothing moved)."
)
stability = state.stability(run.id).by_group(state.read(store.run_groups, run.id))
if stability.empty:
    st.caption(
        views.md(
            "This run has no perturbation yet: no stored per-template IG to leave a template out of, and no finished "
            f"run named {run.name}:seed1 or {run.name}:gauss_legendre-32; "
            f"qrn stability --run {shlex.quote(run.name)} computes them."
        )
    )
else:
    views.table(
        stability,
        column_config={
            "cluster_jaccard": st.column_config.NumberColumn("cluster Jaccard", format="%.2f"),
            "qr_jaccard": st.column_config.NumberColumn("QR-neuron Jaccard", format="%.2f"),
            "qr_kept": st.column_config.NumberColumn("QR neurons kept", format="percent"),
        },
    )

st.subheader("Agreement of the templates")
st.caption(
    "Each prompt template has its own cluster: its neurons above t x that template's maximum; a query's coarse "
    "cluster is their union (Sec. 4.3). Agreement is the mean Jaccard index over pairs of templates: 1 when "
    "they pick the same neurons, near 0 when the cluster depends on how the question is asked."
)
if not state.read(store.has_template_ig, run.id):
    st.info(
        "Template consistency is not available for this run: it was stored without per-template IG (before "
        "store schema 2). Compute a new run with `qrn run` to see it."
    )
    st.stop()
s = state.read(store.run_info, run.id).settings.qrnca
t = thresholds.t_slider(s)
table = state.read(run_analyses.template_consistency, run.id, t)
queries = views.run_queries(run)

left, right = st.columns([3, 2])
left.subheader("Agreement per group")
shown = table.assign(
    group=table["group_name"].map(views.group_label).map(views.plain), query=table["query_id"].map(views.plain)
)
left.plotly_chart(
    px.box(
        shown,
        x="group",
        y="agreement",
        points="all",
        hover_data=["query", "cluster", "in_all"],
        labels={"agreement": "agreement (mean pairwise Jaccard)", "in_all": "in all templates"},
    ).update_layout(height=340, margin={"l": 40, "r": 10, "t": 10, "b": 40}),
    width="stretch",
    key="agreement",
)
right.subheader("Summary")
summary = table.groupby("group_name").agg(
    queries=("query_id", "count"),
    agreement=("agreement", "mean"),
    in_all=("in_all", "mean"),
    cluster=("cluster", "median"),
)
views.table(
    summary.reset_index(),
    where=right,
    column_config={
        "agreement": st.column_config.NumberColumn("agreement", format="%.2f"),
        "in_all": st.column_config.NumberColumn("in all templates", format="percent"),
        "cluster": st.column_config.NumberColumn("cluster", format="%.0f"),
    },
)
right.caption(
    f"All queries: mean agreement {table['agreement'].mean():.2f}; on average {table['in_all'].mean():.0%} of "
    "a cluster is in every template's cluster."
)

st.subheader("Per query")
views.table(
    table.assign(
        question=table["query_id"].map({qid: q.question for qid, q in queries.items()}).fillna(""),
        template_sizes=table["template_sizes"].map(sizes_text),
    ),
    column_config={
        "agreement": st.column_config.ProgressColumn("agreement", format="%.2f", min_value=0.0, max_value=1.0),
        "in_all": st.column_config.NumberColumn("in all templates", format="percent"),
        "template_sizes": st.column_config.TextColumn("cluster per template"),
    },
)

st.subheader("One query's templates")
query = views.pick_query({q: queries[q] for q in table["query_id"] if q in queries})
rows = state.read(run_analyses.query_neurons, run.id, query.id)
above = template_above(np.stack(rows["ig"].to_numpy()), np.zeros(len(rows), int), t)  # (rows, templates)
cluster = rows.assign(**{f"template {p + 1}": above[:, p] for p in range(above.shape[1])})
cluster = cluster.loc[
    np.asarray(above.any(axis=1), dtype=bool),
    ["layer", "neuron", "na", *[f"template {p + 1}" for p in range(above.shape[1])]],
]
views.neuron_table(
    cluster.assign(in_all=np.asarray(above[above.any(axis=1)].all(axis=1), dtype=bool)),
    run,
    column_config={"na": st.column_config.NumberColumn("NA", format="%.3f")},
)
