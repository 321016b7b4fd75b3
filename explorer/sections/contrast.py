"""Contrasts: the neurons that separate two groups of a run (by NA or NAICA), and where in depth each model keeps
them, beside another model's run of the same dataset."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import state, views
from qrcore import store
from qrcore.evaluation import run_analyses
from qrcore.selection import contrast

SHOWN = 20
"""Neurons listed toward each group."""
SCORE_NAMES = {"naica": "NAICA (NA × ICA, Eq. 7)", "na": "NA (Eq. 5)"}
"""How each contrast score reads."""

st.title("Contrasts")
run = views.require_run()
groups = state.read(store.heatmap_groups, run.id)
if len(groups) < 2:
    st.info(f"Run {views.md(repr(run.name))} has fewer than two groups with results, so there is nothing to contrast.")
    st.stop()
left, middle, right = st.columns([2, 2, 3])
among = f"a group of run {run.name}"
first = views.synced(left.selectbox, "Group", "group", options=groups, among=among, format_func=views.group_label)
others = [g for g in groups if g != first]
second = views.synced(
    middle.selectbox,
    "against",
    "group_b",
    options=others,
    among=f"another group of run {run.name}",
    format_func=views.group_label,
)
by = views.synced(
    right.radio, "Rank by", "by", options=contrast.SCORES, horizontal=True, format_func=SCORE_NAMES.__getitem__
)
pair = contrast.Pair(first, second)
shown_first, shown_second = views.group_label(first), views.group_label(second)
st.caption(
    f"Each neuron's {SCORE_NAMES[by]} averaged over all queries of a group (a query that did not keep the neuron "
    f"counts 0), **{views.md(shown_first)}** minus **{views.md(shown_second)}**; NAICA counts a query's coarse "
    "cluster only and discounts neurons found in many of the run's clusters (ICA, Eq. 6). The cluster columns give "
    "the share of each group's queries whose coarse cluster holds the neuron."
)
rows = state.read(run_analyses.group_contrast, run.id, pair, by)


def readable(part: pd.DataFrame) -> pd.DataFrame:
    """The contrast rows with their columns named for the page."""
    first_columns = ["layer", "neuron", "difference"]
    part = part[first_columns + [c for c in part.columns if c not in first_columns]]  # the ranking column first
    return part.head(SHOWN).rename(
        columns={
            f"{by}_{first}": f"{by.upper()} · {shown_first}",
            f"{by}_{second}": f"{by.upper()} · {shown_second}",
            f"cluster_share_{first}": f"cluster · {shown_first}",
            f"cluster_share_{second}": f"cluster · {shown_second}",
        }
    )


for where, (title, part) in zip(
    st.columns(2),
    (
        (f"Neurons of {shown_first} over {shown_second}", rows.loc[rows["difference"] > 0]),
        (f"Neurons of {shown_second} over {shown_first}", rows.loc[rows["difference"] < 0]),
    ),
):
    with where:
        st.subheader(views.md(title))
        if part.empty:
            st.caption("None: no stored neuron scores higher here.")
        else:
            views.neuron_table(
                readable(part),
                run,
                column_config={"difference": st.column_config.NumberColumn("difference", format="%.4f")},
            )


def profile(of: views.Run) -> pd.DataFrame:
    """The run's contrast of the pair by layer at relative depth, toward each group, labelled with its model."""
    shares = contrast.depth_profile(state.read(run_analyses.group_contrast, of.id, pair, by), of.n_layers)
    toward = shares["toward"].map({"first": shown_first, "second": shown_second})
    return shares.assign(toward=toward.map(views.plain), model=views.plain(of.model))


st.subheader("Where the separating neurons sit")
runs = views.finished_runs()
beside = runs.loc[(runs["dataset"] == run.dataset) & (runs["model"] != run.model)]
beside = beside.loc[
    [first in g and second in g for g in (state.read(store.heatmap_groups, i) for i in beside["run_id"])]
]
choice = views.synced(
    st.selectbox,
    "Beside another model's run of this dataset",
    "beside",
    options=[*beside.index, "none"],
    among=f"another model's finished run of dataset {run.dataset} with both groups",
    format_func=lambda n: n if n == "none" else f"{n} · {beside.loc[n, 'model']}",
)
compared = [run] if choice == "none" else [run, views.as_run(beside.loc[choice])]
profiles = pd.concat([profile(r) for r in compared])
st.plotly_chart(
    px.line(
        profiles,
        x="relative_depth",
        y="share",
        color="toward",
        line_dash="model",
        markers=True,
        hover_data=["layer"],
        labels={"relative_depth": "relative depth (0 first layer, 1 last)", "share": "share of |difference|"},
    ),
    width="stretch",
    key="contrast_depth",
)
st.caption(
    "Each layer's share of the summed |difference|, split by the group it favours; layers at their relative depth, "
    "so models of different depth compare. Neurons cannot be matched across models, their depth can."
)
if beside.empty:
    st.caption(
        f"No other model has a finished run of dataset {views.md(run.dataset)} with both groups in this store; "
        f"`qrn run --model OTHER --dataset {views.md(run.dataset)}` adds one."
    )
