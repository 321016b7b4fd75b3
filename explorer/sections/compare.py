"""Compare models: one dataset's runs of two models side by side. Do bigger models localise knowledge more?"""

from __future__ import annotations

import shlex

import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import state, views
from explorer.figures import bin_heatmap, heatmap_figure
from qrcore import store
from qrcore.evaluation import report, run_analyses
from qrcore.selection.analysis import LOCALISATION, relative_depth

COLUMNS = 256
"""Heatmap columns per model (wide layers are max-pooled, as on the Heatmaps page)."""


def pick_pair(first: str) -> tuple[views.Run, views.Run]:
    """Choice of the second model and of a dataset both have finished runs on; the two runs (first model's first)."""
    runs = views.finished_runs()
    datasets = runs.groupby("model")["dataset"].agg(set)
    mine = datasets.get(first, set())
    others = [m for m in datasets.index if m != first and datasets[m] & mine]
    if not others:
        st.info(
            f"Comparing needs finished runs of two models on one dataset, and no other model in this store shares "
            f"a dataset with {views.md(first)}. Compute one with `qrn run --model OTHER --dataset DATASET`, DATASET "
            f"being the dataset of a run of {views.md(first)}"
            + (f" ({views.md(', '.join(sorted(mine)))})." if mine else ".")
        )
        st.stop()
    left, right = st.columns(2)
    among = f"a model with a finished run on a dataset of {first}"
    second = views.synced(left.selectbox, "Compare with", "model_b", options=others, among=among)
    among = f"a dataset that {first} and {second} have finished runs on"
    dataset = views.synced(right.selectbox, "Dataset", "dataset", options=sorted(mine & datasets[second]), among=among)
    return pick_run(runs, first, dataset), pick_run(runs, second, dataset)


def pick_run(runs: pd.DataFrame, name: str, dataset: str) -> views.Run:
    """The run of model `name` on `dataset`; a choice when there are several (other settings)."""
    found = runs.loc[(runs["model"] == name) & (runs["dataset"] == dataset)]
    if len(found) == 1:
        return views.as_run(found.iloc[0])
    return views.as_run(found.loc[st.selectbox(f"Run of {name}", list(found.index), key=f"run_of_{name}")])


def layer_shares(run: views.Run, method: str, group: str) -> pd.DataFrame:
    """The run's share of QR neurons per layer for `group` and as the mean over groups, with each layer's depth."""
    share = state.read(run_analyses.layer_distribution, run.id, method)  # (groups, layers)
    lines = pd.DataFrame({views.group_label(group): share.loc[group], "mean over groups": share.mean(axis=0)})
    lines = lines.assign(layer=range(run.n_layers), depth=relative_depth(run.n_layers))
    return lines.melt(id_vars=["layer", "depth"], var_name="groups", value_name="share").assign(model=run.model)


st.title("Compare models")
a, b = pick_pair(views.model())
relative = a.n_layers != b.n_layers
st.caption(
    f"**{views.md(a.model)}**: run {views.md(a.name)}, {a.n_layers} layers x {a.n_neurons} neurons · "
    f"**{views.md(b.model)}**: run {views.md(b.name)}, "
    f"{b.n_layers} layers x {b.n_neurons} neurons"
    + (
        " · the models differ in depth, so layers are drawn at their relative depth (0 first layer, 1 last)."
        if relative
        else "."
    )
)

st.subheader("Accuracy per group")
accuracy = pd.concat([state.read(store.group_accuracy, r.id).assign(model=r.model) for r in (a, b)])
accuracy = accuracy.assign(group_name=accuracy["group_name"].map(views.group_label))
shown = accuracy.assign(group_name=accuracy["group_name"].map(views.plain), model=accuracy["model"].map(views.plain))
left, right = st.columns([2, 3])
left.dataframe(
    accuracy.pivot(index="group_name", columns="model", values="accuracy")[[a.model, b.model]]
    .rename_axis(index="group")
    .style.format("{:.2f}"),
    width="stretch",
)
left.caption("Share of templates whose highest-probability option letter is the correct one; chance is 1 / options.")
right.plotly_chart(
    px.bar(
        shown,
        x="group_name",
        y="accuracy",
        color="model",
        barmode="group",
        range_y=[0, 1],
        labels={"group_name": "group"},
    ).update_layout(height=300, margin={"l": 40, "r": 10, "t": 10, "b": 40}),
    width="stretch",
    key="accuracy",
)

st.subheader("How concentrated the QR neurons are")
method = views.pick_method()
summary = pd.DataFrame({r.model: state.read(run_analyses.localisation, r.id, method) for r in (a, b)}).rename(
    index=LOCALISATION
)
st.dataframe(summary.style.format("{:.4g}"), width="stretch")

st.subheader("Heatmaps per group")
groups = [g for g in state.read(store.heatmap_groups, a.id) if g in state.read(store.heatmap_groups, b.id)]
group = views.synced(
    st.selectbox, "Group", "group", options=groups, among="a group of both runs", format_func=views.group_label
)
st.caption("NAICA summed over the group's queries, each model on its own layer x neuron grid and colour scale.")
for column, r in zip(st.columns(2), (a, b)):
    binned = bin_heatmap(state.read(run_analyses.heatmap, r.id, group), COLUMNS)
    column.plotly_chart(
        heatmap_figure(
            binned,
            title=views.plain(f"{r.model} · {views.group_label(group)}"),
            depth_of=r.n_layers if relative else None,
        ),
        width="stretch",
        key=f"heatmap-{r.model}",
    )

st.subheader("Overlap between groups")
for column, r in zip(st.columns(2), (a, b)):
    overlap = state.read(run_analyses.overlap, r.id, method).rename(index=views.group_label, columns=views.group_label)
    overlap = overlap.rename(index=views.plain, columns=views.plain)
    column.plotly_chart(
        px.imshow(
            overlap,
            text_auto=".2f",  # pyright: ignore[reportArgumentType]  # plotly takes a format; its hint says bool
            zmin=0,
            zmax=1,
            color_continuous_scale="Blues",
            title=views.plain(r.model),
            labels={"x": "group", "y": "group", "color": "overlap"},
        ),
        width="stretch",
        key=f"overlap-{r.model}",
    )

st.subheader("Where the QR neurons sit")
shares = pd.concat([layer_shares(r, method, group) for r in (a, b)])
shares = shares.assign(groups=shares["groups"].map(views.plain), model=shares["model"].map(views.plain))
st.plotly_chart(
    px.line(
        shares,
        x="depth" if relative else "layer",
        y="share",
        color="model",
        line_dash="groups",
        markers=True,
        hover_data=["layer"],
        labels={"depth": "relative depth"},
    ),
    width="stretch",
    key="layers",
)

st.subheader("PCR and flip rates")
evaluations = pd.concat([state.read(store.evaluations, r.id).assign(model=r.model) for r in (a, b)])
for r in (a, b):
    if not (evaluations["model"] == r.model).any():
        st.info(
            f"Run {views.md(r.name)} of {views.md(r.model)} has no evaluations yet; compute them with "
            f"{views.md(f'qrn evaluate --run {shlex.quote(r.name)}')}."
        )
pcr = evaluations.loc[(evaluations["metric"] == "pcr") & (evaluations["group_name"] == "all")]
flips = views.flip_cases(evaluations.loc[evaluations["metric"].isin(views.FLIPS)])
for title, rows, case in (
    ("PCR over all groups (Table 4)", pcr, "evaluation"),
    ("Flip rates (Table 6)", flips, "case"),
):
    if not rows.empty:
        st.markdown(f"**{title}**")
        table = views.method_names(report.by_method(rows, ["model", case]).reindex(columns=[a.model, b.model], level=0))
        st.dataframe(table.style.format("{:.2f}", na_rep="–"), width="stretch")
