"""Search: the neurons that push up a vocabulary token, and the run's queries that match some words with their QR
neurons, by group and method; every hit links to its neuron card or its query in the lab."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import state, views
from qrcore import store
from qrcore.selection.qrnca import METHOD_NAMES
from qrcore.selection.search import matching_queries

KINDS = {"token": "vocabulary token", "question": "question text"}
ALL_GROUPS = "all groups"


def qr_counts(run: views.Run, method: str, neurons: pd.DataFrame) -> list[int]:
    """For each (layer, neuron) row: of how many of the run's queries it is a QR neuron by `method`."""
    qr = state.read(store.qr_neurons, run.id, method)
    counts = qr.groupby(["layer", "neuron"]).size()
    return [int(counts.get((int(l), int(n)), 0)) for l, n in zip(neurons["layer"], neurons["neuron"])]


def token_hits(run: views.Run, text: str, method: str) -> None:
    """The neurons whose value vectors push up the first token of `text` most, under the run's model."""
    if unavailable := run.model_unavailable():
        st.info(f"Searching by token needs the run's model: {unavailable}")
        return
    with views.inline_errors():
        token, hits = state.token_neurons(run.model, text)
        st.caption(
            f"The {len(hits)} neurons of {views.md(run.model)} that push up the token {views.md(repr(token))} most: "
            "each neuron's value vector dotted with the token's unembedding row (Table 5's projection, read the "
            f"other way round). *QR of queries*: of how many of the run's queries it is a QR neuron by "
            f"{views.md(METHOD_NAMES[method])}."
        )
        views.neuron_table(
            hits.assign(qr_of_queries=qr_counts(run, method, hits)),
            run,
            column_config={
                "score": st.column_config.NumberColumn("score", format="%.3f"),
                "qr_of_queries": st.column_config.NumberColumn("QR of queries"),
            },
        )


def question_hits(run: views.Run, text: str, group: str, method: str) -> None:
    """The run's queries that hold every word of `text` (in `group`), each linked to the lab, and their QR neurons."""
    queries = [q for q in views.run_queries(run).values() if group in (ALL_GROUPS, q.group)]
    hits = matching_queries(queries, text)
    st.caption(f"{len(hits)} of the run's {len(queries)} queries hold every word of {views.md(repr(text))}.")
    if not hits:
        return
    views.table(
        pd.DataFrame(
            {
                "query_id": [q.id for q in hits],
                "group_name": [q.group for q in hits],
                "question": [q.question for q in hits],
                "answer": [q.answer for q in hits],
                "lab": [views.query_url(run, q.id) for q in hits],
            }
        ),
        column_config={"lab": st.column_config.LinkColumn("query lab", display_text="open in the lab")},
    )
    st.subheader(f"Their QR neurons by {views.md(METHOD_NAMES[method])}")
    qr = state.read(store.qr_neurons, run.id, method)
    views.neuron_table(qr.loc[qr["query_id"].isin([q.id for q in hits])], run)


st.title("Search")
run = views.require_run()
text = views.synced(
    st.text_input,
    "Search for",
    views.SEARCH,
    help="A word the neurons push up (a leading space is part of most tokens: ' Paris'), or words of a question.",
)
left, middle, right = st.columns(3)
kind = views.synced(left.radio, "Search by", "by", options=list(KINDS), format_func=KINDS.__getitem__, horizontal=True)
groups = [ALL_GROUPS, *state.read(store.heatmap_groups, run.id)]
group = views.synced(
    middle.selectbox,
    "Group",
    "search_group",
    options=groups,
    among=f"a group of run {run.name}",
    format_func=views.group_label,
    disabled=kind == "token",
)
method = views.pick_method(right)
if not text.strip():
    st.info("Type a token (' Paris') to find the neurons that push it up, or words of a question to find queries.")
elif kind == "token":
    token_hits(run, text, method)
else:
    question_hits(run, text, group, method)
