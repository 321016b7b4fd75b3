"""Widgets shared by the pages: model and run pickers, choices mirrored in the page link, query picker, neuron tables,
and the escaping of every user-provided text (questions, options, answers, names, generated text) that a page shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
import html
import re
from typing import Any
from urllib.parse import urlencode, urlparse

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer import state
from qrcore import store
from qrcore.data.queries import Query
from qrcore.editing import edits
from qrcore.errors import QRNError
from qrcore.model.tokens import quoted
from qrcore.selection import qrnca

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
CARD_PAGE = "sections/neuron.py"
"""The neuron card page, for st.page_link."""
SEARCH_PAGE = "sections/search.py"
"""The Search page, which the sidebar's search box opens."""
SEARCH = "q"
"""Session-state key (and link parameter) of the Search page's text."""
GO_TO_SEARCH = "go_to_search"
"""Session key: set by the search box, so that the page switches to Search."""
MODEL = "model"
"""Session-state key (and link parameter) of the model picked in the sidebar."""
CHOICES_NAMED = 8
"""A link value's options are named in its notice when there are at most this many."""
LINK_SHOWN = 80
"""Characters of a replaced link value that its notice shows."""
STABILITY_HELP = (
    "In how many of the run's perturbations (each prompt template left out; the runs named RUN:seed1 and "
    "RUN:gauss_legendre-32, where stored) it stays a QR neuron of its query."
)
"""What a stability column means."""
LANGUAGES = {"ar": "Arabic", "en": "English", "fr": "French", "ja": "Japanese", "ru": "Russian", "zh": "Chinese"}
"""The language sets' group codes and the names shown for them."""
COLUMN_LABELS = {
    "group_name": "group",
    "query_id": "query",
    "n_clusters": "clusters",
    "naica_rank": "NAICA rank",
    "in_all": "in all templates",
    "in_cluster": "cluster",
    "is_common": "common",
    "qr_rank": "QR rank",
    "mean_na": "mean NA",
    "ig": "IG per template",
}
"""How stored column names read in tables."""
WIDE = {"group_name", "query_id", "question", "reason", "tokens", "ig"}
"""Columns of names and text, drawn wide enough not to cut them."""
FLIPS = {"correct_to_incorrect": "correct → incorrect", "incorrect_to_correct": "incorrect → correct"}
"""Flip-rate metrics (Table 6) and how they read."""


def md(text: object) -> str:
    """`text` as Markdown (st.markdown, st.caption, st.error, ...) that shows exactly it: never a link, an image, HTML,
    formatting or a Streamlit directive."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\g<0>", AUTOLINK.sub(lambda m: m[0] + WORD_JOINER, str(text)))


def plain(text: object) -> str:
    """`text` for plotly labels, titles and hover text, which read HTML tags: `&`, `<` and `>` escaped, so that it shows
    as written (plotly decodes only a few named entities; `&quot;` would show as such, so quotes stay as they are)."""
    return html.escape(str(text), quote=False)


def group_label(group: str) -> str:
    """A group as shown: a language code's language name (ar -> Arabic), any other group as it is."""
    return LANGUAGES.get(group, group)


@dataclass(frozen=True)
class Run:
    """The finished run the pages show."""

    id: str
    name: str
    model: str
    dataset: str
    n_layers: int
    n_neurons: int
    model_id: str
    """Fingerprint of the model that computed the run."""

    def model_unavailable(self) -> str | None:
        """Why the run's own model cannot be used here (vocabulary tokens, activations, editing, scoring): it is not
        installed, or installed with other weights than the ones that computed the run; None when it can."""
        if message := state.missing(self.model):
            return message
        if state.model(self.model).fingerprint != self.model_id:
            return (
                f"the installed {md(self.model)} has other weights than the ones that computed run "
                f"{md(repr(self.name))}."
            )
        return None


def synced(
    widget: Callable[..., Any],
    label: str,
    key: str,
    *,
    options: Sequence[Any] | None = None,
    valid: Callable[[Any], bool] = lambda _: True,
    among: str | None = None,
    parse: Callable[[str], Any] = str,
    dump: Callable[[Any], str] = str,
    scope: str | None = None,
    **kwargs: Any,
) -> Any:
    """Render `widget` with its value in session state `key` and in the page link as ?key=..., so views can be shared.

    The link seeds the value on first load; a value the widget cannot take (not among `options`, a list for a
    multiselect, or failing `valid`) is replaced by the widget's default, and one line under the widget says so and
    what it can take (`among`, else the options); a value chosen under another `scope` (say, the layer range of
    another run's model) is dropped too.
    """

    def ok(value: Any) -> bool:
        members = value if isinstance(value, list) else [value]
        return (options is None or all(v in options for v in members)) and valid(value)

    st.session_state.setdefault(SYNCED, set()).add(key)
    if scope is not None and st.session_state.setdefault(f"{key}.scope", scope) != scope:
        st.session_state[f"{key}.scope"] = scope
        st.session_state.pop(key, None)
        st.query_params.pop(key, None)
    rejected = None
    if key not in st.session_state and key in st.query_params:
        try:
            value = parse(st.query_params[key])
        except (ValueError, TypeError, OverflowError):
            value = None
        if value is not None and ok(value):
            st.session_state[key] = value
        else:
            rejected = st.query_params[key]
    if key in st.session_state and not ok(st.session_state[key]):
        del st.session_state[key]
    value = widget(label, key=key, **kwargs) if options is None else widget(label, options, key=key, **kwargs)
    st.query_params[key] = dump(value)
    if rejected is not None:
        replaced(f"?{key}={rejected}", among or choices(options or [], dump), dump(value) or "none")
    return value


def choices(options: Sequence[Any], dump: Callable[[Any], str]) -> str:
    """What a link value can be, in words: its few options as the link writes them, or 'one of the choices here'."""
    return f"one of {', '.join(map(dump, options))}" if 0 < len(options) <= CHOICES_NAMED else "one of the choices here"


def replaced(what: str, among: str, instead: str) -> None:
    """One line saying that `what` in the link (shortened when long) was replaced by `instead`, and why."""
    shown = what if len(what) <= LINK_SHOWN else what[: LINK_SHOWN - 1] + "…"
    st.warning(md(f"{shown} in the link is not {among}; showing {instead} instead."))


def page_path_notice(shown: Any, paths: Sequence[str]) -> None:
    """One line when the link names a page path the app does not have (Streamlit then shows `shown`, its default)."""
    url = st.context.url
    if url is None:
        return
    path = urlparse(url).path.strip("/").removeprefix(st.get_option("server.baseUrlPath").strip("/")).strip("/")
    requested = path.removesuffix(shown.url_path).strip("/") if shown.url_path else path
    if requested not in paths:
        replaced(f"The page /{requested}", "a page of the explorer", shown.title)


def keep_synced() -> None:
    """Keep the synced choices of pages not shown now (Streamlit drops a widget's state when it is not drawn)."""
    for key in st.session_state.get(SYNCED, set()):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def list_runs() -> pd.DataFrame:
    """The store's runs (none before the store exists); a store that cannot be read stops the page with its error."""
    if not state.has_store():
        return pd.DataFrame(columns=["run_id", "name", "model", "dataset", "status", "settings_json"])
    with inline_errors(stop=True):
        return state.read(store.list_runs)


def finished_runs() -> pd.DataFrame:
    """The store's finished runs (`list_runs` rows) indexed by name."""
    runs = list_runs()
    return runs.loc[runs["status"] == "finished"].set_index("name", drop=False)


def pick_model() -> str:
    """Sidebar choice of the model (?model=...) among those with finished runs and the one the app starts on.

    It starts on $QRN_MODEL (or the default) when that has runs, else on the first model that has.
    """
    counts = finished_runs()["model"].value_counts(sort=False)
    start = state.model_name()
    options = [*counts.index, *([] if start in counts else [start])]
    name = synced(
        st.sidebar.selectbox,
        "Model",
        MODEL,
        options=options,
        among="a model with runs in this store",
        index=options.index(start) if start in counts else 0,
        format_func=lambda m: f"{m} · {counts.get(m, 0)} run(s)",
    )
    if state.missing(name):
        st.sidebar.caption(
            f"{md(name)} is not installed here: its runs browse, but vocabulary tokens and the query "
            "lab need it (see *Query lab*)."
        )
    return name


def model() -> str:
    """The model picked in the sidebar (app.py draws the picker before every page)."""
    return st.session_state.get(MODEL) or state.model_name()


def pick_run() -> Run | None:
    """Sidebar choice of a finished run of the picked model; None (with a hint) when there is none."""
    name = model()
    runs = finished_runs()
    runs = runs.loc[runs["model"] == name]
    if runs.empty:
        st.sidebar.info(
            f"No finished run of {md(name)} in {md(state.db_path())} yet: start one on *Data and models* "
            f"or with `qrn run --model {name}`."
        )
        return None
    label = {n: f"{n} · {r.dataset}" for n, r in runs.iterrows()}
    among = f"a finished run of {name}"
    return as_run(
        runs.loc[
            synced(
                st.sidebar.selectbox, "Run", "run", options=list(runs.index), among=among, format_func=label.__getitem__
            )
        ]
    )


def as_run(row: pd.Series) -> Run:
    """The Run of a `finished_runs` row."""
    info = state.read(store.run_info, row["run_id"])
    return Run(row["run_id"], row["name"], row["model"], row["dataset"], info.n_layers, info.n_neurons, info.model_id)


def require_run() -> Run:
    """The run picked in the sidebar; stops the page with a hint if there is none."""
    run = pick_run()
    if run is None:
        st.info("This page shows a finished run. Compute one on the *Data and models* page or with `qrn run`.")
        st.stop()
    return run


@contextmanager
def inline_errors(stop: bool = False) -> Iterator[None]:
    """Show a QRNError raised inside the block as an inline error; the rest of the page still renders, unless `stop`."""
    try:
        yield
    except QRNError as err:
        st.error(md(err))
        if stop:
            st.stop()


def run_queries(run: Run) -> dict[str, Query]:
    """The queries of the run's dataset by id, in dataset order."""
    return {q.id: q for q in state.read(store.load_queries, run.dataset)}


def pick_query(queries: dict[str, Query], where: Any = st) -> Query:
    """A selectbox of the queries (synced as ?query=...), labelled by group and question."""

    def label(qid: str) -> str:
        q = queries[qid]
        return f"{qid} · {q.group} · {q.question[:70]}"

    among = "a query of this run"
    return queries[synced(where.selectbox, "Query", "query", options=list(queries), among=among, format_func=label)]


def neuron_label(neuron: tuple[int, int]) -> str:
    """'layer:neuron', the form neurons take in widgets and links."""
    return f"{neuron[0]}:{neuron[1]}"


def parse_neuron(label: str) -> tuple[int, int]:
    """Inverse of `neuron_label`; ValueError for anything else."""
    layer, neuron = label.split(":")
    return int(layer), int(neuron)


def with_tokens(frame: pd.DataFrame, name: str, k: int = 8) -> pd.DataFrame:
    """`frame` (with layer, neuron columns) plus each neuron's top vocabulary tokens under model `name`."""
    if frame.empty:
        return frame
    neurons = tuple(zip(frame["layer"].astype(int), frame["neuron"].astype(int)))
    tokens = state.vocab_tokens(name, neurons, k)
    return frame.assign(tokens=[quoted(tokens[n]) for n in neurons])


def pick_method(where: Any = st) -> str:
    """A selectbox of the QR-neuron methods by their paper names (synced as ?method= with the method's id)."""
    return synced(where.selectbox, "Method", "method", options=qrnca.METHODS, format_func=qrnca.METHOD_NAMES.get)


def method_names(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (indexed by method id) with the methods' paper names and the groups' names as its labels."""
    return frame.rename(index=qrnca.METHOD_NAMES, columns=group_label).rename_axis(index="method")


def stability_text(stays: int, of: int) -> str:
    """A QR neuron's stability as shown: the perturbations it stays in out of those of its query, e.g. '2/3'."""
    return f"{stays}/{of}" if of else "–"


def with_stability(frame: pd.DataFrame, run: Run, query_id: str | None = None) -> pd.DataFrame:
    """`frame` (neurons: layer, neuron, and the query_id of each row unless `query_id` names the one query) plus a
    `stability` column (`stability_text`) for the rows that are a QR neuron of their query, '' for the others."""
    rows = state.stability(run.id).neurons
    text = {
        (q, l, n): stability_text(s, o)
        for q, l, n, s, o in zip(rows["query_id"], rows["layer"], rows["neuron"], rows["stays"], rows["of"])
    }
    queries = frame["query_id"] if query_id is None else [query_id] * len(frame)
    return frame.assign(
        stability=[text.get((q, int(l), int(n)), "") for q, l, n in zip(queries, frame["layer"], frame["neuron"])]
    )


def query_url(run: Run, query_id: str) -> str:
    """The link (relative to the app) of a query of `run` in the query lab, with the run's model and the run."""
    return f"lab?{urlencode({'source': 'dataset', 'query': query_id, MODEL: run.model, 'run': run.name})}"


def search_box() -> None:
    """A search box in the sidebar: Enter opens the Search page on its text."""
    st.sidebar.text_input(
        "Search", key="search_box", placeholder="a token such as ' Paris', or question words", on_change=_search
    )
    if st.session_state.pop(GO_TO_SEARCH, False):
        st.switch_page(SEARCH_PAGE)


def _search() -> None:
    """Search box callback: its text becomes the Search page's, which the page switch then opens."""
    st.session_state[SEARCH] = st.session_state["search_box"]
    st.session_state[GO_TO_SEARCH] = True


def card_params(run: Run, neuron: tuple[int, int]) -> dict[str, str]:
    """The link parameters of the neuron's card in `run`: the neuron, the run's model and the run."""
    return {"neuron": neuron_label(neuron), MODEL: run.model, "run": run.name}


def card_url(run: Run, neuron: tuple[int, int]) -> str:
    """The link (relative to the app) of the neuron's card in `run`: neuron?neuron=L:I&model=MODEL&run=NAME."""
    return f"{CARD_PATH}?{urlencode(card_params(run, neuron))}"


def clickable(fig: go.Figure) -> go.Figure:
    """The heatmap figure with a clickable, nearly invisible marker on every non-zero cell (plotly selects no heatmap
    cell, only points), which hovers like the cell; `clicked_card_link` turns a click into a card link."""
    cells = fig.data[0]
    if not isinstance(cells, go.Heatmap):
        raise TypeError(f"clickable takes a heatmap figure, not one of {type(cells).__name__}")
    z = np.asarray(cells.z)  # (layers, bins)
    rows, cols = np.nonzero(z)
    fig.add_trace(
        go.Scatter(
            x=np.asarray(cells.x)[cols],
            y=np.asarray(cells.y)[rows],
            customdata=np.asarray(cells.customdata)[rows, cols],
            mode="markers",
            marker={"size": 10, "opacity": 0.01, "symbol": "square"},
            showlegend=False,
            text=z[rows, cols],
            hovertemplate=str(cells.hovertemplate).replace("%{z", "%{text"),
        )
    )
    return fig.update_layout(clickmode="event+select", hovermode="closest")


def clicked_card_link(event: Any, run: Run) -> None:
    """Under a `clickable` heatmap drawn with on_select: a link to the card of the clicked cell's neuron."""
    points = event.selection.points if event else []
    if points:
        neuron = (int(points[0]["y"]), int(points[0]["customdata"][0]))
        st.page_link(
            CARD_PAGE,
            label=f"Open the card of neuron {neuron_label(neuron)}",
            icon=":material/memory:",
            query_params=card_params(run, neuron),
        )


def with_card_links(frame: pd.DataFrame, run: Run | None) -> pd.DataFrame:
    """`frame` (with layer, neuron columns) plus a `card` column linking each neuron's card in `run` (none without)."""
    if run is None or frame.empty:
        return frame
    return frame.assign(card=[card_url(run, (int(l), int(n))) for l, n in zip(frame["layer"], frame["neuron"])])


def column_config(**overrides: Any) -> dict[str, Any]:
    """st.dataframe column settings: readable names (COLUMN_LABELS), text columns wide, card links and stability
    explained; `overrides` per column."""
    readable = {c: st.column_config.Column(COLUMN_LABELS.get(c, c), width="medium") for c in WIDE}
    readable |= {c: st.column_config.Column(label) for c, label in COLUMN_LABELS.items() if c not in WIDE}
    return {
        **readable,
        "card": st.column_config.LinkColumn("card", display_text="open card"),
        "stability": st.column_config.TextColumn("stability", help=STABILITY_HELP),
        **overrides,
    }


def table(frame: pd.DataFrame, where: Any = st, **kwargs: Any) -> None:
    """`frame` as a stretched table without its index, its groups by `group_label`, under `column_config` (with
    kwargs' column_config over it)."""
    config = column_config(**kwargs.pop("column_config", {}))
    if "group_name" in frame:
        frame = frame.assign(group_name=frame["group_name"].map(group_label))
    where.dataframe(frame, hide_index=True, width="stretch", column_config=config, **kwargs)


def ig_text(values: Sequence[float]) -> str:
    """A neuron's per-template IG, rounded: '0.412 / 0.388 / 0.450'."""
    return " / ".join(f"{v:.3f}" for v in values)


def neuron_table(frame: pd.DataFrame, run: Run | None, **kwargs: Any) -> None:
    """A neuron table with a link to each neuron's card in the run and its vocabulary tokens under the run's model
    (with run None: no card links, and tokens under the picked model, loaded already), or a caption saying why there
    are none.

    While the run's model loads, the table is shown without tokens, and they are added in place when it has loaded.
    """
    draw = partial(table, where=st.empty(), **kwargs)
    if run is not None and state.loading_needed(run.model):
        draw(with_card_links(frame, run))
    unavailable = None if run is None else run.model_unavailable()
    draw(with_card_links(frame if unavailable else with_tokens(frame, model() if run is None else run.model), run))
    if unavailable:
        st.caption(f"No vocabulary tokens: {unavailable}")


def hover_labels(name: str, neurons: Sequence[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Hover text per neuron: its top vocabulary tokens under model `name`, HTML-escaped for plotly."""
    tokens = state.vocab_tokens(name, tuple(neurons))
    return {n: "tokens: " + plain(quoted(tokens[n])) for n in neurons}


def flip_cases(flips: pd.DataFrame) -> pd.DataFrame:
    """Flip-rate rows with a `case` column such as 'suppress: correct → incorrect'."""
    return flips.assign(case=flips["evaluation"] + ": " + flips["metric"].map(FLIPS))


EDIT_FILE_FORMATS = (("json", "application/json"), ("csv", "text/csv"))
"""The formats of edit and neuron-set files (`qrcore.editing.edits`) and their MIME types."""


def file_name(*parts: str) -> str:
    """A download's file name (without extension) from what it holds: the parts joined by '-', each with runs of
    anything but letters, digits, '.', '-' and '_' made '_'."""
    return "-".join(re.sub(r"[^\w.-]+", "_", p, flags=re.ASCII).strip("_") for p in parts)


def download_buttons(
    columns: Sequence[Any],
    label: str,
    kind: str,
    meta: dict[str, str],
    frame: pd.DataFrame,
    disabled: bool,
    names: Sequence[str] = (),
) -> None:
    """One download button per edit-file format, in `columns`: `frame` as a file of `kind` with `meta`, named by the
    kind and `names` (run, group, set)."""
    for column, (fmt, mime) in zip(columns, EDIT_FILE_FORMATS):
        column.download_button(
            f"{label} {fmt.upper()}",
            edits.dump(kind, meta, frame, fmt),
            file_name=f"{file_name(kind, *names)}.{fmt}",
            mime=mime,
            key=f"{kind}_{fmt}",
            disabled=disabled,
            icon=":material/download:",
        )
