"""Overlap and layers (Fig. 2): how much the groups' QR neurons overlap, and in which layers they sit."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from explorer import state, views
from qrcore.evaluation import run_analyses
from qrcore.selection import qrnca

st.title("Overlap and layers")
run = views.require_run()
method = views.pick_method()
left, right = st.columns(2)

overlap = state.read(run_analyses.overlap, run.id, method)
left.subheader("Overlap rate (Jaccard) between groups")
left.plotly_chart(
    px.imshow(
        overlap.rename(index=views.group_label, columns=views.group_label).rename(
            index=views.plain, columns=views.plain
        ),
        text_auto=".2f",  # pyright: ignore[reportArgumentType]  # plotly takes a format; its hint says bool
        zmin=0,
        zmax=1,
        color_continuous_scale="Blues",
        labels={"x": "group", "y": "group", "color": "overlap"},
    ),
    width="stretch",
    key="overlap",
)

share = state.read(run_analyses.layer_distribution, run.id, method)
long = share.reset_index().melt(id_vars="group_name", var_name="layer", value_name="share")
long["group_name"] = long["group_name"].map(views.group_label).map(views.plain)
right.subheader("Share of QR neurons per layer")
style = right.radio("Draw as", ("lines", "bars"), horizontal=True, key="layer_style")
labels = {"group_name": "group"}
right.plotly_chart(
    px.line(long, x="layer", y="share", color="group_name", labels=labels, markers=True)
    if style == "lines"
    else px.bar(long, x="layer", y="share", color="group_name", labels=labels, barmode="group"),
    width="stretch",
    key="layers",
)
st.caption(
    f"Run **{views.md(run.name)}**, method **{views.md(qrnca.METHOD_NAMES[method])}**. Overlap is |A ∩ B| / |A ∪ B| of the "
    "groups' QR-neuron sets; layer shares count every (query, neuron) selection, so each group's shares sum to 1."
)
