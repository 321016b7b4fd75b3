"""What makes a neuron fire, on its card (issue 27 item 2): the run's queries ranked by its activation f at the answer
position (stored by `qrn activations`, or computed here with a progress bar), and its f on every token of a query's
prompt or of typed text, as text coloured by activation."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import state, views
from qrcore import store
from qrcore.data.queries import Query
from qrcore.selection import qrnca
from qrcore.selection.activations import TOP_QUERIES

F_HELP = (
    "f: the FFN up-projection output that NA attributes (Sec. 4.2) at the answer position, mean over the templates."
)
SOURCES = {"query": "a query of the run", "text": "my text"}
EXAMPLE = "The capital of France is Paris."


def token_html(tokens: list[str], values: np.ndarray) -> str:
    """The tokens as one paragraph of HTML spans, each escaped, coloured by its activation (red above 0, blue below,
    opacity |f| / max |f|) and titled with it; a newline token shows as ↵ and breaks the line."""
    scale = float(np.abs(values).max()) or 1.0
    spans = []
    for token, value in zip(tokens, values):
        rgb = "214, 39, 40" if value >= 0 else "31, 119, 180"
        text = html.escape(token.replace("\n", "↵"), quote=False) + ("<br>" if "\n" in token else "")
        spans.append(
            f'<span title="{value:.4f}" style="background: rgba({rgb}, {abs(value) / scale:.3f}); '
            f'white-space: pre-wrap; border-radius: 2px">{text}</span>'
        )
    return f'<p style="line-height: 1.9; font-family: monospace">{"".join(spans)}</p>'


def ranked(acts: pd.DataFrame, queries: dict[str, Query], run: views.Run) -> None:
    """A table of queries (query_id, activation), highest first, with their group, question and a lab link."""
    known = acts.loc[acts["query_id"].isin(list(queries))]
    views.table(
        pd.DataFrame(
            {
                "rank": range(1, len(known) + 1),
                "query_id": known["query_id"].to_numpy(),
                "group_name": [queries[q].group for q in known["query_id"]],
                "question": [queries[q].question for q in known["query_id"]],
                "activation": known["activation"].to_numpy(np.float64),
                "lab": [views.query_url(run, q) for q in known["query_id"]],
            }
        ),
        column_config={
            "activation": st.column_config.NumberColumn("activation f", format="%.3f", help=F_HELP),
            "lab": st.column_config.LinkColumn("query lab", display_text="open in the lab"),
        },
    )


def top_queries(run: views.Run, neuron: tuple[int, int], queries: dict[str, Query], card, unavailable: str | None):
    """The run's queries of the neuron's highest activation at the answer position: stored, computed, or a button."""
    layer, index = neuron
    st.subheader("What makes it fire")
    covered = state.read(store.top_queries_done, run.id)
    acts = None if unavailable else state.cached_activations(run.model, run.id)
    if covered:
        st.caption(
            f"The {TOP_QUERIES} queries of the run on which it is most active, among {covered} of its "
            f"{len(queries)} queries (stored by `qrn activations`). {F_HELP}"
        )
        ranked(state.read(store.neuron_top_queries, run.id, layer, index), queries, run)
    elif acts is not None:
        column = acts[:, layer, index]
        order = np.argsort(-column, kind="stable")[:TOP_QUERIES]
        st.caption(f"The {TOP_QUERIES} queries of the run on which it is most active, of all {len(queries)}. {F_HELP}")
        ranked(pd.DataFrame({"query_id": np.array(list(queries))[order], "activation": column[order]}), queries, run)
        values = pd.DataFrame(
            {
                "query": [views.plain(q) for q in queries],
                "activation": column,
                "group": [views.plain(views.group_label(q.group)) for q in queries.values()],
            }
        )
        st.plotly_chart(
            px.strip(values, x="group", y="activation", hover_data=["query"]).update_layout(
                height=300, margin={"l": 40, "r": 10, "t": 10, "b": 40}
            ),
            width="stretch",
            key="activations",
        )
    else:
        st.caption(
            f"This run's top queries are not stored (`qrn activations --run {views.md(run.name)}` stores them). The "
            f"store keeps each query's {qrnca.TOP_ACTIVATIONS} highest activations; this neuron is among them for "
            f"{len(card.top_activations)} queries."
        )
        views.table(card.top_activations)
        if not unavailable and st.button(
            f"Compute its activation on all {len(queries)} queries",
            help="One forward per prompt; kept for every later card of this run.",
        ):
            bar = st.progress(0.0, "Computing activations…")
            settings = state.read(store.run_info, run.id).settings
            state.compute_activations(
                run.model,
                run.id,
                list(queries.values()),
                settings,
                lambda done, total, _query: bar.progress(done / total, f"Query {done} of {total}"),
            )
            st.rerun()


def top_query(run: views.Run, neuron: tuple[int, int], queries: dict[str, Query]) -> str | None:
    """The query of the neuron's highest activation, stored or computed; None when neither is there yet."""
    stored = state.read(store.neuron_top_queries, run.id, *neuron)
    known = [q for q in stored["query_id"] if q in queries]
    if known:
        return known[0]
    acts = state.cached_activations(run.model, run.id)
    return list(queries)[int(np.argmax(acts[:, neuron[0], neuron[1]]))] if acts is not None and queries else None


def token_view(run: views.Run, neuron: tuple[int, int], queries: dict[str, Query], unavailable: str | None) -> None:
    """The neuron's activation on every token of a query's prompt (a template of it; its top query first) or of typed
    text."""
    st.subheader("Its activation on every token")
    if unavailable:
        st.caption(f"Needs the run's model: {unavailable}")
        return
    left, right = st.columns([1, 3])
    source = left.radio("Prompt", list(SOURCES), format_func=SOURCES.__getitem__, key="fire_source")
    with views.inline_errors():
        if source == "query" and queries:
            options = list(queries)
            qid = right.selectbox(
                "Query",
                options,
                index=options.index(top_query(run, neuron, queries) or options[0]),
                format_func=lambda q: f"{q} · {queries[q].question}",
                key="fire_query",
            )
            prompts = state.prompts(run.model, queries[qid])
            template = right.radio("Template", range(len(prompts)), format_func=lambda t: f"{t + 1}", horizontal=True)
            ids = tuple(prompts[template].input_ids)
        else:
            ids = state.text_ids(run.model, right.text_area("Text", EXAMPLE, key="fire_text"))
        tokens, values = state.token_activations(run.model, ids, *neuron)
        top = int(np.argmax(values))
        st.markdown(token_html(tokens, values), unsafe_allow_html=True)
        st.caption(
            f"{len(tokens)} tokens; highest f {values[top]:.3f} on {views.md(repr(tokens[top]))}, "
            f"{values[-1]:.3f} on the last token. Red: f above 0, blue: below; hover a token for its value."
        )
