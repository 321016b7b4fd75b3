"""Heatmaps (Fig. 5): NAICA summed over a group's queries, layer by neuron; two groups side by side or subtracted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer import lab_evidence, state, thresholds, views
from explorer.figures import MAX_COLS, bin_heatmap, clipped, color_limit, heatmap_figure
from qrcore import store
from qrcore.evaluation import run_analyses
from qrcore.selection.topk import top_neurons

MODES = ("one group", "side by side", "difference")
# Hover shows vocabulary tokens for this many strongest cells of the view (projecting every cell takes seconds).
TOKEN_CELLS = 256

st.title("Heatmaps")
run = views.require_run()
groups = state.read(store.heatmap_groups, run.id)
if not groups:
    st.info(
        f"Run {views.md(repr(run.name))} has no neuron with positive NAICA in any group, so there is nothing to draw."
    )
    st.stop()
at = thresholds.controls(run)
left, middle, right = st.columns([2, 2, 3])
mode = views.synced(middle.radio, "Show", "mode", options=MODES, horizontal=True)
group = views.synced(
    left.selectbox,
    "Group",
    "group",
    options=groups,
    among=f"a group of run {run.name}",
    format_func=views.group_label,
)
others = [g for g in groups if g != group] or groups
other = views.synced(
    left.selectbox,
    "Second group",
    "group_b",
    options=groups,
    among=f"a group of run {run.name}",
    index=groups.index(others[0]),
    disabled=mode == MODES[0],
    format_func=views.group_label,
)
last = run.n_layers - 1
lo, hi = views.synced(
    right.slider,
    "Layers",
    "layers",
    min_value=0,
    max_value=last,
    value=(0, last),
    valid=lambda v: len(v) == 2 and 0 <= v[0] <= v[1] <= last,
    among=f"a layer range first-last within 0-{last}",
    parse=lambda s: tuple(map(int, s.split("-"))),
    dump=lambda v: f"{v[0]}-{v[1]}",
    scope=run.id,
)
columns = right.select_slider(
    "Columns",
    (128, 256, MAX_COLS),
    value=256,
    key="columns",
    help="Fewer columns pool more neurons into each, so sparse maps are easier to see.",
)
st.caption(
    f"Run **{views.md(run.name)}** · {run.n_layers} layers x {run.n_neurons} neurons · wide layers are "
    f"max-pooled into at most {columns} columns, each showing its strongest neuron; hover names it, with its "
    f"top vocabulary tokens for the {TOKEN_CELLS} strongest cells."
)


def view(name: str) -> np.ndarray:
    """The group's map restricted to the chosen layers (at the live thresholds, if they differ from the run's)."""
    full = state.read(run_analyses.heatmap, run.id, name) if at is None else thresholds.heatmap(at, name, run)
    return full[lo : hi + 1]


def labels(*binned_maps) -> dict[tuple[int, int], str]:
    """Token hover text for the strongest cells of the maps, when the run's model can be used here."""
    if run.model_unavailable():
        return {}
    cells = {
        (lo + int(l), int(b.top[l, c])): abs(float(b.values[l, c]))
        for b in binned_maps
        for l, c in zip(*np.nonzero(b.values))
    }
    strongest = sorted(cells, key=cells.__getitem__, reverse=True)[:TOKEN_CELLS]
    return views.hover_labels(run.model, sorted(strongest))


shown, shown_other = views.group_label(group), views.group_label(other)
maps = (
    [(shown, view(group))]
    if mode == MODES[0]
    else [(f"{shown} − {shown_other}", view(group) - view(other))]
    if mode == MODES[2]
    else [(shown, view(group)), (shown_other, view(other))]
)
binned = [bin_heatmap(m, columns) for _, m in maps]
zmax = color_limit([b.values for b in binned])
top = clipped([b.values for b in binned], zmax)
st.caption(
    f"Colours span ±{zmax:.3g}, the 95th percentile of the non-zero cells' |NAICA|"
    + ("." if top is None else f"; stronger cells, up to {top:.3g}, show the end colour (hover gives the value).")
)
panes = st.columns(len(maps))
charts = [pane.empty() for pane in panes]


def figures(hover: dict[tuple[int, int], str]) -> list[go.Figure]:
    """The maps' clickable figures with `hover` text per neuron."""
    return [views.clickable(heatmap_figure(b, lo, views.plain(t), zmax, hover)) for (t, _), b in zip(maps, binned)]


if state.loading_needed(run.model):  # the maps at once; their token hover follows when the model has loaded
    for chart, figure in zip(charts, figures({})):
        chart.plotly_chart(figure, width="stretch")

st.subheader(f"Strongest neurons in view: {views.md(maps[0][0])}")
first = maps[0][1]
top = pd.DataFrame(top_neurons(np.abs(first), 20), columns=["layer", "neuron", "score"])
top["score"] = first[top["layer"], top["neuron"]]  # signed
top["layer"] += lo
views.neuron_table(top.loc[top["score"] != 0], run)

for i, (pane, chart, figure) in enumerate(zip(panes, charts, figures(labels(*binned)))):
    event = chart.plotly_chart(figure, width="stretch", key=f"heatmap-{i}", on_select="rerun", selection_mode="points")
    with pane:
        views.clicked_card_link(event, run)

lab_evidence.show_group_edit(run, group, view(group), lo)
