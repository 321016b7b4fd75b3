"""Methods (Sec. 5, Tables 4, 6, 7): QRNCA against the baselines, from the run's stored evaluations (`qrn evaluate`)."""

from __future__ import annotations

import shlex

import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import state, views
from qrcore import store
from qrcore.evaluation import report
from qrcore.selection import qrnca

CHANGES = {"related_change": "related queries", "unrelated_change": "unrelated queries"}
REFERENCE_LABELS = {"prompt_accuracy": "prompt-based", "chance": "random guess"}
LOG_RATIO = 20.0
"""A chart whose largest bar is this many times its median bar gets a log axis, so the others stay readable."""


def show(table: pd.DataFrame, rows: pd.DataFrame, x: str, label: str, key: str, higher_is_better: bool = True) -> None:
    """A method table (the best of each column highlighted, if higher is better) beside a grouped bar chart, on a
    log axis (and saying so) when one bar would flatten the rest."""
    left, right = st.columns([2, 3])
    table = views.method_names(table)
    style = table.style.format("{:.3f}", na_rep="–")
    left.dataframe(style.highlight_max(axis=0, color="#d6e4ff") if higher_is_better else style, width="stretch")
    names = rows["method"].replace(qrnca.METHOD_NAMES)
    shown = rows.assign(**{x: rows[x].map(views.group_label).map(views.plain), "method": names.map(views.plain)})
    fig = px.bar(
        shown,
        x=x,
        y="value",
        color="method",
        barmode="group",
        labels={"value": label, "group_name": "group"},
        category_orders={"method": [views.plain(m) for m in table.index]},
    )
    values = rows["value"].dropna()
    log = bool((values > 0).all() and values.max() > LOG_RATIO * values.median())
    right.plotly_chart(
        fig.update_layout(height=300, margin={"l": 40, "r": 10, "t": 10, "b": 40}).update_yaxes(
            type="log" if log else "linear"
        ),
        width="stretch",
        key=key,
    )
    if log:
        right.caption(
            f"Log axis: the largest value, {values.max():.4g}, is {values.max() / values.median():.0f} times the "
            "median, and would flatten the other bars."
        )


st.title("Methods")
run = views.require_run()
evaluations = state.read(store.evaluations, run.id)
if evaluations.empty:
    st.info(
        f"Run {views.md(repr(run.name))} has no evaluations yet. Compute them with "
        f"{views.md(f'qrn evaluate --run {shlex.quote(run.name)}')} "
        "(PCR, flip rates and neuron-based prediction per method); this page then shows them."
    )
    st.stop()
metric = evaluations["metric"]

pcr = evaluations.loc[metric == "pcr"]
if not pcr.empty:
    st.subheader("Probability change ratio (Table 4)")
    st.caption(
        "Edit a query's neurons (boost x2, suppress x0): |mean % change of P(correct) of the query| / |mean % "
        "change of an unrelated query of another group|. Higher means the neurons are more query-specific."
    )
    for evaluation, rows in pcr.groupby("evaluation"):
        st.markdown(f"**{views.md(evaluation)}**")
        show(report.by_method(rows, "group_name"), rows, "group_name", "PCR", f"pcr-{evaluation}")
    changes = evaluations.loc[metric.isin(CHANGES) & (evaluations["group_name"] == "all")]
    with st.expander("Mean % change of P(correct), related and unrelated queries"):
        st.dataframe(
            report.by_method(
                changes.assign(metric=changes["metric"].map(CHANGES)), ["evaluation", "metric"]
            ).style.format("{:+.2f}", na_rep="–"),
            width="stretch",
        )

flips = evaluations.loc[metric.isin(views.FLIPS)]
if not flips.empty:
    st.subheader("Flip rates (Table 6)")
    st.caption("Share of answers (argmax option) that flip when the query's neurons are suppressed or boosted.")
    flips = views.flip_cases(flips)
    show(report.by_method(flips, "case"), flips, "case", "flip rate", "flips", higher_is_better=False)

answers = evaluations.loc[evaluations["evaluation"] == "answer_prediction"]
if not answers.empty:
    st.subheader("Neuron-based answer prediction (Table 7)")
    st.caption(
        "Every fifth query of each group is held out. Each option letter is appended to its prompt; the "
        "predicted option is the one under which the group's neurons (the QR neurons of its other queries) "
        "are most active. Prompt-based: the model's own answer on the same queries."
    )
    both = report.answer_prediction_rows(answers)
    both = both.assign(method=both["method"].replace(REFERENCE_LABELS))
    show(
        report.by_method(both, "group_name", (*qrnca.METHODS, *REFERENCE_LABELS.values())),
        both,
        "group_name",
        "accuracy",
        "answer-prediction",
    )

groups = evaluations.loc[evaluations["evaluation"] == "group_prediction"]
if not groups.empty:
    st.subheader("Group prediction (ours)")
    n_groups = evaluations.loc[evaluations["group_name"] != "all", "group_name"].nunique()
    st.caption(
        "Held-out queries' groups predicted from which group's QR neurons they activate most at the answer "
        f"position; chance is 1/{n_groups} for {n_groups} groups."
    )
    show(report.by_method(groups, "metric"), groups, "metric", "accuracy", "group-prediction")
