"""The explorer's access to its model and store, and every st.cache_resource / st.cache_data wrapper.

Pages call these and draw (only `startup` and `attribution` draw, their own progress bars). The sidebar's model
picker starts on $QRN_MODEL (default START_MODEL; "tiny-<arch>" is a seeded tiny model); the store is $QRN_DB
(default cache/qrn.duckdb).
An open DuckDB connection locks the file against `qrn run`, so no connection is kept: each read opens the store
read-only and closes it, and reads are cached under the file's modification stamp, so that any write, by this app
or by a run elsewhere, makes them stale. torch and transformers are imported by the functions that need them, so that
a first start shows its progress bar within seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
import os
from pathlib import Path
import tempfile
import threading
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from qrcore import store
from qrcore.attribution.results import PartialAttribution, QueryAttribution
from qrcore.data.datasets import import_file
from qrcore.data.prompts import ChoicePrompt
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.progress import Progress
from qrcore.settings import RunSettings

if TYPE_CHECKING:
    import duckdb

    from qrcore.attribution.precision import Bf16Choice
    from qrcore.attribution.prefixes import PackedPrefix
    from qrcore.editing.evidence import DoseResponse, NeuronEffects, Scorecard
    from qrcore.evaluation.lab import ControlledEdit, LabRun
    from qrcore.model.spec import LoadedModel
    from qrcore.selection.stability import Stability

MODEL_ENV = "QRN_MODEL"
START_MODEL = "qwen2.5-coder-1.5b"
"""The model the app starts on: the embedded one that knows the answers (the README's *The models*); the picker
falls back to the first model with runs when it has none."""
R = TypeVar("R")
Neuron = tuple[int, int]
EditKey = tuple[tuple[int, int, float], ...]
"""A hashable edit: sorted (layer, neuron, multiplier) triples."""


def model_name() -> str:
    """The model the app starts on: $QRN_MODEL or START_MODEL."""
    return os.environ.get(MODEL_ENV) or START_MODEL


def db_path() -> str:
    """The app's store: $QRN_DB or cache/qrn.duckdb."""
    return store.default_db()


def startup(db: str) -> None:
    """Once per process and store: load the shipped runs into it (`qrcore.store.shipped`) unless $QRN_SHIPPED is 0.

    A first start shows a progress bar while the runs load, instead of a blank page.
    """
    from qrcore.store.shipped import load_shipped_runs, pending, wanted

    if not wanted():
        return

    with _lock("startup"):
        started = _started()
        if db in started:
            return
        if pending(db):
            with st.status("First start: loading the shipped runs into the store…", expanded=True) as status:
                bar = st.progress(0.0)
                load_shipped_runs(
                    db, lambda done, total, table: bar.progress(done / total, f"{table} · {done / total:.0%}")
                )
                status.update(label="Shipped runs loaded", state="complete", expanded=False)
        started.add(db)


@st.cache_resource
def _started() -> set[str]:
    """The stores that this process has already checked for the shipped runs."""
    return set()


@st.cache_resource
def _lock(key: str) -> threading.Lock:
    """A lock shared by every session of this process, one per key: edits hook the shared model's modules, and a
    first start writes the store, so two sessions must not do either at once."""
    return threading.Lock()


@st.cache_data(show_spinner=False, ttl=30)
def missing(name: str) -> str | None:
    """What to install for model `name` (a one-line message), or None when it can be loaded here."""
    from qrcore.model.load import check_installed

    try:
        check_installed(name)
    except QRNError as err:
        return str(err)
    return None


@st.cache_resource(
    show_spinner="Loading the model for its vocabulary tokens (its first use here de-quantizes it once: minutes)…",
    max_entries=2,
)
def _load(name: str) -> LoadedModel:
    """The model `name`, loaded once per process for every session."""
    from qrcore.model.load import load_model
    from qrcore.model.spec import ModelSpec

    return load_model(ModelSpec(name))


@st.cache_resource
def _loaded() -> set[str]:
    """Names of the models `model` has returned in this process (one that `_load` has evicted since loads again on
    its next use, without the first draw of `loading_needed`)."""
    return set()


def model(name: str) -> LoadedModel:
    """The model `name` (any `qrn --model` name; "tiny-<arch>" is a seeded random tiny model)."""
    lm = _load(name)
    _loaded().add(name)
    return lm


def loading_needed(name: str) -> bool:
    """Whether model `name` is installed but not loaded in this process yet: pages then draw what needs no model at
    once and add its vocabulary tokens when it has loaded (a first use de-quantizes it: minutes for 1.5B)."""
    return missing(name) is None and name not in _loaded()


def has_store() -> bool:
    """Whether the store file exists yet."""
    return Path(db_path()).exists()


def _stamp(db: str) -> tuple[int, ...]:
    """Modification times of the store and its write-ahead log: a new stamp means the cached reads are stale."""
    return tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else 0 for p in (db, f"{db}.wal"))


def read(reader: Callable[..., R], *args: object) -> R:
    """`reader(con, *args)` (a qrcore.store reader) on a short read-only connection, cached until the store changes."""
    db = db_path()
    return _read(db, _stamp(db), f"{reader.__module__}.{reader.__qualname__}", args, _reader=reader)


@st.cache_data(show_spinner=False, max_entries=512)
def _read(db: str, stamp: tuple[int, ...], name: str, args: tuple, _reader: Callable[..., R]) -> R:
    """The cached body of `read`, keyed by store, stamp, reader name and arguments."""
    with store.connect(db, read_only=True) as con:
        return _reader(con, *args)


def stability(run_id: str) -> Stability:
    """The run's QR-neuron stability (`qrcore.runs.stability.run_stability`), cached until the store changes."""
    return read(_stability, run_id)


def _stability(con: duckdb.DuckDBPyConnection, run_id: str) -> Stability:
    """`run_stability` of the run with this id (a reader for `read`)."""
    from qrcore.runs.stability import run_stability

    return run_stability(con, store.run_info(con, run_id))


def import_dataset(filename: str, data: bytes, name: str) -> int:
    """Parse an uploaded .json/.csv dataset and store it as dataset `name`; the number of queries, or QRNError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(filename).name
        path.write_bytes(data)
        queries = import_file(path, name)
    with store.connect(db_path()) as con:
        store.upsert_dataset(con, name, f"upload:{Path(filename).name}", queries)
    return len(queries)


def start_run(name: str, dataset: str, run_name: str | None, per_group: int | None, progress: Progress) -> str:
    """Compute a run of model `name` on `dataset` (at most `per_group` queries a group) into the store; its id."""
    from qrcore.runs.batch import run_dataset

    with _lock(f"model:{name}"):
        return run_dataset(model(name), dataset, db=db_path(), name=run_name, per_group=per_group, progress=progress)


def shape(name: str) -> tuple[int, int]:
    """(layers, neurons per layer) of model `name`."""

    sites = model(name).sites
    return len(sites), sites[0].n_neurons


def check(name: str, neurons: list[Neuron]) -> None:
    """QRNError naming a layer or neuron index outside model `name`."""
    from qrcore.editing.scaling import check_neurons

    check_neurons(model(name), neurons)


def edit_key(neurons: list[Neuron], multiplier: float, each: dict[Neuron, float] | None = None) -> EditKey:
    """The hashable edit that scales every neuron in `neurons` by `multiplier`, or by its own multiplier in `each`."""
    each = each or {}
    return tuple(sorted((layer, neuron, round(each.get((layer, neuron), multiplier), 4)) for layer, neuron in neurons))


@st.cache_data(show_spinner=False, max_entries=64)
def prompts(name: str, query: Query) -> list[ChoicePrompt]:
    """The query's multi-choice prompts for model `name` (QRNError for a prompt over the context)."""
    from qrcore.attribution.ig import NeuronAttribution

    return NeuronAttribution(model(name)).prompts(query)


@st.cache_resource(show_spinner=False, max_entries=32)
def _prefixes(name: str, query: Query) -> PackedPrefix:
    """The query's prompt prefixes under model `name`, run once: an edit touches only the answer position."""
    from qrcore.attribution.prefixes import prefix_cache

    with _lock(f"model:{name}"):
        return prefix_cache(model(name), prompts(name, query))


@st.cache_data(show_spinner=False, max_entries=1024)
def option_probs(name: str, query: Query, edit: EditKey = ()) -> np.ndarray:
    """(prompts, options) probability of each option letter after each of the query's prompts, under `edit`.

    `qrcore.editing.scaling.letter_probs` over the cached prefixes, so a slider move costs one packed forward of the
    answer positions (tens of milliseconds instead of a second).
    """
    from qrcore.editing.scaling import letter_probs

    lm, cache = model(name), _prefixes(name, query)
    with _lock(f"model:{name}"):
        return letter_probs(lm, prompts(name, query), {(l, n): m for l, n, m in edit}, cache)


@st.cache_data(show_spinner=False, max_entries=32)
def attribution(name: str, query: Query, settings: RunSettings = RunSettings()) -> QueryAttribution:
    """NA of every neuron of model `name` for the query under a run's attribution and prompt settings, with a progress
    bar while it runs (seconds on a CPU).

    The bar is made inside so that a cache hit replays it (as an empty element) instead of failing.
    """
    from qrcore.attribution.ig import NeuronAttribution

    bar = st.progress(0.0, "Attributing…")
    with _lock(f"model:{name}"):
        result = NeuronAttribution(model(name), settings.attribution, settings.prompt).attribute(
            query, lambda done, total, _pass: bar.progress(done / total, f"Attributing… pass {done} of {total}")
        )
    bar.empty()
    return result


@st.cache_resource(show_spinner=False)
def bf16_choice(name: str) -> Bf16Choice:
    """Whether model `name`'s live attribution multiplies in bfloat16 here: the matmul peaks, measured once a process,
    and the model's measured agreement (`qrcore.attribution.precision.choose_bf16`)."""
    from qrcore.attribution.precision import measured_bf16_choice

    return measured_bf16_choice(name, model(name).device)


@st.cache_resource
def _finished() -> dict[tuple[str, Query, RunSettings, bool], QueryAttribution]:
    """Attributions that `attribution_as_it_comes` ran to the end, by (model, query, settings, bfloat16 products)."""
    return {}


FINISHED = 32
"""Most finished attributions `_finished` keeps; the oldest goes first."""


def attribution_as_it_comes(
    name: str, query: Query, settings: RunSettings, bf16: bool, show: Callable[[PartialAttribution], None]
) -> QueryAttribution:
    """`attribution` layer block by layer block from the top (`NeuronAttribution.attribute_top_down`), each partial
    result handed to `show` as it finishes, in bfloat16 products where `bf16`; a finished one is kept and returned at
    once.

    Leaving the page or changing the question stops the script inside `show`: the block's hooks are already removed
    (each block removes its own before its result comes out), the generator is closed, the model's lock released and
    nothing is kept.
    """
    from qrcore.attribution.ig import NeuronAttribution, live_block
    from qrcore.attribution.precision import chosen_precision

    key = (name, query, settings, bf16)
    if key not in _finished():
        lm = model(name)
        attr = NeuronAttribution(lm, settings.attribution, settings.prompt)
        with (
            _lock(f"model:{name}"),
            chosen_precision(lm.model, bf16),
            closing(attr.attribute_top_down(query, live_block(len(attr.sites)))) as parts,
        ):
            for part in parts:
                show(part)
        while len(_finished()) >= FINISHED:
            _finished().pop(next(iter(_finished())))
        _finished()[key] = part.attribution
    return _finished()[key]


@st.cache_data(show_spinner=False, max_entries=64)
def answer(name: str, question: str, edit: EditKey = ()) -> str:
    """The free-form greedy answer of model `name` to `question` under `edit`."""
    from qrcore.editing.scaling import generate

    with _lock(f"model:{name}"):
        return generate(model(name), question, {(layer, neuron): m for layer, neuron, m in edit})


@st.cache_data(show_spinner=False, max_entries=256)
def vocab_tokens(name: str, neurons: tuple[Neuron, ...], k: int = 8, largest: bool = True) -> dict[Neuron, list[str]]:
    """Top-k (or with largest=False bottom-k) vocabulary tokens of each neuron's value vector (Table 5) under `name`."""
    from qrcore.editing.vocab import project_neurons

    with _lock(f"model:{name}"):
        frame = project_neurons(model(name), list(neurons), k, largest=largest)
    return {(int(l), int(n)): list(t) for l, n, t in frame.itertuples(index=False)}


@st.cache_data(show_spinner=False, max_entries=64)
def token_neurons(name: str, text: str, k: int = 50) -> tuple[str, pd.DataFrame]:
    """The first token of `text` under model `name` and the k neurons whose value vectors push it up most
    (`qrcore.selection.search`); QRNError for no token."""
    from qrcore.selection.search import first_token, neurons_for_token

    with _lock(f"model:{name}"):
        token_id, token = first_token(model(name), text)
        return token, neurons_for_token(model(name), token_id, k)


def fingerprint(name: str) -> str:
    """The fingerprint of model `name` (the store's model id)."""
    return model(name).fingerprint


@st.cache_resource
def _activations() -> dict[tuple[str, str], np.ndarray]:
    """Answer-position activations over a run's queries computed so far, by (model, run id), shared by all sessions."""
    return {}


def cached_activations(name: str, run_id: str) -> np.ndarray | None:
    """(queries, layers, neurons) activations of model `name` over run `run_id`'s queries, if computed already."""
    return _activations().get((name, run_id))


def compute_activations(
    name: str, run_id: str, queries: list[Query], settings: RunSettings, progress: Progress
) -> np.ndarray:
    """`qrcore.selection.activations.answer_activations` of model `name` over the run's queries (in order), stacked and
    kept for later cards."""
    from qrcore.selection.activations import answer_activations

    if (name, run_id) not in _activations():
        with _lock(f"model:{name}"):
            _activations()[(name, run_id)] = np.stack(
                list(answer_activations(model(name), queries, settings, progress))
            )
    return _activations()[(name, run_id)]


@st.cache_data(show_spinner=False, max_entries=64)
def text_ids(name: str, text: str) -> tuple[int, ...]:
    """`text` as model `name`'s token ids."""
    return tuple(model(name).tokenizer.encode(text))


@st.cache_data(show_spinner=False, max_entries=64)
def token_activations(name: str, ids: tuple[int, ...], layer: int, neuron: int) -> tuple[list[str], np.ndarray]:
    """Each token's text (`qrcore.model.tokens.token_texts`) and the neuron's activation f on it under model `name`
    (`qrcore.selection.activations.token_activations`); QRNError for no tokens, too many or a neuron out of range."""
    from qrcore.model.tokens import token_texts
    from qrcore.selection.activations import token_activations as activations

    with _lock(f"model:{name}"):
        lm = model(name)
        return token_texts(lm.tokenizer, list(ids)), activations(lm, ids, layer, neuron)


# The query lab's evidence (issue 25): `qrcore.evaluation.lab` on the run's stored queries, cached per store stamp.


def lab_run(run: str) -> LabRun:
    """The finished run `run` as the lab reads it (`qrcore.evaluation.lab.read_lab`), cached until the store changes."""
    db = db_path()
    return _lab_run(db, _stamp(db), run)


@st.cache_data(show_spinner=False, max_entries=8)
def _lab_run(db: str, stamp: tuple[int, ...], run: str) -> LabRun:
    """The cached body of `lab_run`."""
    from qrcore.evaluation.lab import read_lab

    return read_lab(run, db)


def _bar(label: str) -> tuple[Progress, Callable[[], object]]:
    """A progress bar made in the calling cached function (so a cache hit replays it) and its clearing."""
    bar = st.progress(0.0, label)
    return lambda done, total, what: bar.progress(done / max(total, 1), f"{label} {what}"), bar.empty


@st.cache_data(show_spinner=False, max_entries=32)
def scorecard(
    name: str, run: str, query: Query, neurons: tuple[Neuron, ...], edit: ControlledEdit, locality: int
) -> Scorecard:
    """`edit_scorecard` of the neurons for the query with fluency, drawing a progress bar while it runs."""
    from qrcore.evaluation.lab import edit_scorecard

    progress, done = _bar("Measuring the edit and its controls…")
    with _lock(f"model:{name}"):
        card = edit_scorecard(
            model(name),
            lab_run(run),
            query,
            list(neurons),
            f"query {query.id}, {len(neurons)} selected neurons",
            edit,
            locality,
            with_fluency=True,
            progress=progress,
        )
    done()
    return card


@st.cache_data(show_spinner=False, max_entries=32)
def sweeps(
    name: str,
    run: str,
    query: Query,
    sets: tuple[tuple[str, tuple[Neuron, ...]], ...],
    neurons: tuple[Neuron, ...],
    edit: ControlledEdit,
) -> tuple[DoseResponse, DoseResponse]:
    """The dose-response of each named neuron set (`edit_sweep`) and of `neurons`' matched controls
    (`control_sweep`)."""
    from qrcore.evaluation.lab import control_sweep, edit_sweep

    lm, lab = model(name), lab_run(run)
    with _lock(f"model:{name}"):
        return edit_sweep(lm, lab, query, dict(sets)), control_sweep(lm, lab, query, list(neurons), edit)


@st.cache_data(show_spinner=False, max_entries=32)
def neuron_effects(name: str, run: str, query: Query, neurons: tuple[Neuron, ...], multiplier: float) -> NeuronEffects:
    """Each neuron scaled alone on the query's prompts (`edit_neuron_effects`)."""
    from qrcore.evaluation.lab import edit_neuron_effects

    with _lock(f"model:{name}"):
        return edit_neuron_effects(model(name), lab_run(run), query, list(neurons), multiplier)


@st.cache_data(show_spinner=False, max_entries=32)
def group_card(name: str, run: str, group: str, neurons: tuple[Neuron, ...] | None, edit: ControlledEdit) -> Scorecard:
    """`group_scorecard` of the group's QRNCA neurons (or the given ones), drawing a progress bar while it runs."""
    from qrcore.evaluation.lab import group_scorecard

    progress, done = _bar("Measuring the group edit and its controls…")
    with _lock(f"model:{name}"):
        card = group_scorecard(
            model(name), lab_run(run), group, edit=edit, neurons=neurons and list(neurons), progress=progress
        )
    done()
    return card


def stream_answer(name: str, question: str, edit: EditKey = ()) -> Iterator[str]:
    """`qrcore.editing.streaming.stream` of model `name` under `edit`, the model's lock held for each token's step
    and released between them, so that streams can be read in turns."""
    from qrcore.editing.streaming import stream

    pieces = stream(model(name), question, {(layer, neuron): m for layer, neuron, m in edit})
    while True:
        with _lock(f"model:{name}"):
            piece = next(pieces, None)
        if piece is None:
            return
        yield piece
