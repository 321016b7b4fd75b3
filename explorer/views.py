"""Widgets shared by the pages: the run picker, choices mirrored in the page link, query picker, neuron tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
import html
import re
from typing import Any
from urllib.parse import urlencode
import zlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from qrcore import store
from qrcore.errors import QRNError
from qrcore.queries import Query

import state

SYNCED = "_synced_keys"
"""Session-state key of the set of widget keys that `synced` mirrors in the link."""
MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
"""ASCII punctuation: CommonMark shows a backslash-escaped one as itself, never as markup."""
AUTOLINK = re.compile(r"https?(?=:)|www(?=\.)|@", re.IGNORECASE)
"""Where GitHub Markdown starts a link from plain (even escaped) text: a URL, a www. address, an e-mail address."""
WORD_JOINER = "\u2060"
"""An invisible character that, put after an AUTOLINK match, keeps the text from becoming a link."""
CARD_PATH = "neuron"
"""URL path of the neuron card page; `card_url` links to it."""
CARD_PAGE = "pages/neuron.py"


def md(text: object) -> str:
    """`text` as Markdown (st.markdown, st.caption, st.error, ...) that shows exactly it: never a link, an image, HTML,
    formatting or a Streamlit directive."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\g<0>", AUTOLINK.sub(lambda m: m[0] + WORD_JOINER, str(text)))


def plain(text: object) -> str:
    """`text` for plotly labels, titles and hover text, which read HTML tags: escaped so that it shows as written."""
    return html.escape(str(text))


@dataclass(frozen=True)
class Run:
    """The finished run the pages show."""

    id: str
    name: str
    model: str
    dataset: str
    n_layers: int
    n_neurons: int

    @property
    def on_app_model(self) -> bool:
        """Whether the run was computed with the app's model, so its neurons can be projected and edited."""
        return self.model == state.model_name()


def synced(widget: Callable[..., Any], label: str, key: str, *, options: Sequence[Any] | None = None,
           valid: Callable[[Any], bool] = lambda _: True, parse: Callable[[str], Any] = str,
           dump: Callable[[Any], str] = str, **kwargs: Any) -> Any:
    """Render `widget` with its value in session state `key` and in the page link as ?key=..., so views can be shared.

    The link seeds the value on first load; a value the widget cannot take (not among `options`, a list for a
    multiselect, or failing `valid`) is dropped for the widget's default.
    """
    def ok(value: Any) -> bool:
        members = value if isinstance(value, list) else [value]
        return (options is None or all(v in options for v in members)) and valid(value)

    st.session_state.setdefault(SYNCED, set()).add(key)
    if key not in st.session_state and key in st.query_params:
        try:
            value = parse(st.query_params[key])
        except (ValueError, TypeError):
            value = None
        if value is not None and ok(value):
            st.session_state[key] = value
    if key in st.session_state and not ok(st.session_state[key]):
        del st.session_state[key]
    value = widget(label, key=key, **kwargs) if options is None else widget(label, options, key=key, **kwargs)
    st.query_params[key] = dump(value)
    return value


def keep_synced() -> None:
    """Keep the synced choices of pages not shown now (Streamlit drops a widget's state when it is not drawn)."""
    for key in st.session_state.get(SYNCED, set()):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def pick_run() -> Run | None:
    """Sidebar choice of a finished run of the store; None (with a hint) when there is none."""
    runs = state.read(store.list_runs) if state.has_store() else pd.DataFrame(columns=["name", "status"])
    finished = runs.loc[runs["status"] == "finished"].set_index("name", drop=False)
    if finished.empty:
        st.sidebar.info(f"No finished run in {state.db_path()} yet: start one on *Data and models* or with `qrn run`.")
        return None
    label = {n: f"{n} · {r.model} · {r.dataset}" for n, r in finished.iterrows()}
    name = synced(st.sidebar.selectbox, "Run", "run", options=list(finished.index), format_func=label.__getitem__)
    row = finished.loc[name]
    info = state.read(store.run_info, row["run_id"])
    return Run(row["run_id"], name, row["model"], row["dataset"], info.n_layers, info.n_neurons)


def require_run() -> Run:
    """The run picked in the sidebar; stops the page with a hint if there is none."""
    run = pick_run()
    if run is None:
        st.info("This page shows a finished run. Compute one on the *Data and models* page or with `qrn run`.")
        st.stop()
    return run


@contextmanager
def inline_errors() -> Iterator[None]:
    """Show a QRNError raised inside the block as an inline error; the rest of the page still renders."""
    try:
        yield
    except QRNError as err:
        st.error(str(err))


def run_queries(run: Run) -> dict[str, Query]:
    """The queries of the run's dataset by id, in dataset order."""
    return {q.id: q for q in state.read(store.load_queries, run.dataset)}


def pick_query(queries: dict[str, Query], where: Any = st) -> Query:
    """A selectbox of the queries (synced as ?query=...), labelled by group and question."""
    def label(qid: str) -> str:
        q = queries[qid]
        return f"{qid} · {q.group} · {q.question[:70]}"

    return queries[synced(where.selectbox, "Query", "query", options=list(queries), format_func=label)]


def neuron_label(neuron: tuple[int, int]) -> str:
    """'layer:neuron', the form neurons take in widgets and links."""
    return f"{neuron[0]}:{neuron[1]}"


def parse_neuron(label: str) -> tuple[int, int]:
    """Inverse of `neuron_label`; ValueError for anything else."""
    layer, neuron = label.split(":")
    return int(layer), int(neuron)


def with_tokens(frame: pd.DataFrame, model_ok: bool, k: int = 8) -> pd.DataFrame:
    """`frame` (with layer, neuron columns) plus each neuron's top vocabulary tokens, if its model is the app's."""
    if not model_ok or frame.empty:
        return frame
    neurons = tuple(zip(frame["layer"].astype(int), frame["neuron"].astype(int)))
    tokens = state.vocab_tokens(state.model_name(), neurons, k)
    return frame.assign(tokens=[" ".join(repr(t) for t in tokens[n]) for n in neurons])


def card_url(run: str, neuron: tuple[int, int]) -> str:
    """The link (relative to the app) of the neuron's card in run `run`: neuron?neuron=L:I&run=NAME."""
    return f"{CARD_PATH}?{urlencode({'neuron': neuron_label(neuron), 'run': run})}"


def clickable(fig: go.Figure) -> go.Figure:
    """The heatmap figure with a clickable, nearly invisible marker on every non-zero cell (plotly selects no heatmap
    cell, only points), which hovers like the cell; `clicked_card_link` turns a click into a card link."""
    cells = fig.data[0]
    z = np.asarray(cells.z)  # (layers, bins)
    rows, cols = np.nonzero(z)
    fig.add_trace(go.Scatter(
        x=np.asarray(cells.x)[cols], y=np.asarray(cells.y)[rows], customdata=np.asarray(cells.customdata)[rows, cols],
        mode="markers", marker={"size": 10, "opacity": 0.01, "symbol": "square"}, showlegend=False,
        text=z[rows, cols], hovertemplate=cells.hovertemplate.replace("%{z", "%{text")))
    return fig.update_layout(clickmode="event+select", hovermode="closest")


def clicked_card_link(event: Any, run: str) -> None:
    """Under a `clickable` heatmap drawn with on_select: a link to the card of the clicked cell's neuron."""
    points = event.selection.points if event else []
    if points:
        neuron = (int(points[0]["y"]), int(points[0]["customdata"][0]))
        st.page_link(CARD_PAGE, label=f"Open the card of neuron {neuron_label(neuron)}", icon=":material/memory:",
                     query_params={"neuron": neuron_label(neuron), "run": run})


def with_card_links(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (with layer, neuron columns) plus a `card` column linking each neuron's card in the sidebar's run."""
    run = st.session_state.get("run")
    if run is None or frame.empty:
        return frame
    return frame.assign(card=[card_url(run, (int(l), int(n))) for l, n in zip(frame["layer"], frame["neuron"])])


def neuron_table(frame: pd.DataFrame, model_ok: bool, **kwargs: Any) -> None:
    """A neuron table with vocabulary tokens and a link to each neuron's card; without tokens a caption says why."""
    config = {"card": st.column_config.LinkColumn("card", display_text="open card"),
              **kwargs.pop("column_config", {})}
    st.dataframe(with_card_links(with_tokens(frame, model_ok)), hide_index=True, width="stretch",
                 column_config=config, **kwargs)
    if not model_ok:
        st.caption(f"Vocabulary tokens need the run's model; the app runs {state.model_name()} "
                   f"(set {state.MODEL_ENV} to the run's model to see them).")


def hover_labels(neurons: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Hover text per neuron: its top vocabulary tokens, HTML-escaped for plotly."""
    tokens = state.vocab_tokens(state.model_name(), tuple(neurons))
    return {n: "tokens: " + html.escape(" ".join(repr(t) for t in tokens[n])) for n in neurons}


def control_neurons(neurons: Sequence[tuple[int, int]], n_neurons: int, seed: int = 0) -> list[tuple[int, int]]:
    """As many random neurons as given, each from its counterpart's layer and outside the selection; seeded."""
    chosen = set(neurons)
    rng = np.random.default_rng([seed, zlib.crc32(",".join(map(neuron_label, sorted(chosen))).encode())])
    out: list[tuple[int, int]] = []
    for layer, _ in sorted(chosen):
        free = np.setdiff1d(np.arange(n_neurons), [n for l, n in chosen | set(out) if l == layer])
        out.append((layer, int(rng.choice(free))))
    return out
