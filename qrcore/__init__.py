"""QR Neuron Explorer engine: QRNCA (Chen, Dejl, Toni, AAAI 2025) for decoder LLMs.

The public API, for notebooks (`import qrcore as qr`):

    lm = qr.load("smollm2")                          # an embedded model's name, a .gguf file, a folder or a hub id
    q = qr.query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris")
    result = qr.attribute(lm, q)                     # each template's IG of every FFN neuron (Eq. 5)
    qr.top_neurons(qr.query_na(result.ig, qr.QRNCASettings()).na, 5)   # its top neurons by NA
    qr.run(lm, "domain", per_group=2, name="demo")   # a dataset attributed into the store, then QRNCA
    qr.evaluate(lm, "demo")                          # PCR (Table 4), flips (Table 6), prediction (Table 7)
    qr.tables("demo")["qr_neurons"]                  # the report's tables as DataFrames
    qr.qr_neurons("demo")                            # every query's QR neurons (or a baseline's: method=)
    qr.contrast("demo", "biology", "physics")        # the neurons that separate two groups (mean NAICA, Eq. 7)
    qr.score_against_run(lm, q, "demo")              # a question of your own: its QR neurons against the run
    probs = qr.letter_probs(lm, qr.prompts(lm, q), {(3, 17): 0.0})   # option probabilities under an edit
    qr.save_edit("edit.json", lm, {(3, 17): 0.0})    # an edit file the explorer and `qr.load_edit` read
    with qr.edited(lm, qr.load_edit("edit.json")):   # any forward inside runs with the neurons scaled
        ...
    with qr.open_store() as con:                     # the DuckDB store (default $QRN_DB or cache/qrn.duckdb)
        qr.store.list_runs(con)

Also: `qr.NeuronAttribution` (the attribution method as a class), `qr.RunSettings`, `qr.PromptSettings`,
`qr.AttributionSettings`, `qr.QRNCASettings`, `qr.QRNError`. Importing this package loads no model and opens no
database: every name is imported from its submodule on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from qrcore.attribution.results import QueryAttribution
    from qrcore.data.prompts import ChoicePrompt
    from qrcore.data.queries import Query
    from qrcore.model.spec import LoadedModel
    from qrcore.selection.contrast import ContrastScore
    from qrcore.settings import RunSettings

__version__ = "0.1.0"

_LAZY = {
    "query": ("qrcore.data.queries", "make_query"),
    "NeuronAttribution": ("qrcore.attribution.ig", "NeuronAttribution"),
    "query_na": ("qrcore.selection.qrnca", "query_na"),
    "top_neurons": ("qrcore.selection.topk", "top_neurons"),
    "letter_probs": ("qrcore.editing.scaling", "letter_probs"),
    "edited": ("qrcore.editing.scaling", "edited"),
    "load_edit": ("qrcore.editing.edits", "load_edit"),
    "run": ("qrcore.runs.batch", "run_dataset"),
    "evaluate": ("qrcore.evaluation.evaluate", "evaluate_run"),
    "open_store": ("qrcore.store", "connect"),
    "store": ("qrcore.store", None),
    "RunSettings": ("qrcore.settings", "RunSettings"),
    "PromptSettings": ("qrcore.settings", "PromptSettings"),
    "AttributionSettings": ("qrcore.settings", "AttributionSettings"),
    "QRNCASettings": ("qrcore.settings", "QRNCASettings"),
    "QRNError": ("qrcore.errors", "QRNError"),
}
"""Public names imported from their submodule on first use: name -> (module, attribute; None for the module)."""

__all__ = sorted(
    [
        *_LAZY,
        *["load", "prompts", "attribute", "tables", "qr_neurons", "contrast", "score_against_run", "save_edit"],
        "__version__",
    ]
)


def __getattr__(name: str) -> Any:
    """A lazy public name (`_LAZY`), imported on first use and kept in the package's namespace."""
    if name not in _LAZY:
        raise AttributeError(f"module 'qrcore' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API with the lazy names, for tab completion."""
    return sorted({*globals(), *__all__})


def load(name: str = "smollm2", dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """A model by name: an embedded model (smollm2, qwen2.5-coder-1.5b, gemma3-270m), a .gguf file, a model folder,
    a hub id already in the local cache, or a seeded tiny test model (tiny-llama, ...)."""
    from qrcore.model.load import load_model
    from qrcore.model.spec import ModelSpec

    return load_model(ModelSpec(name, dtype, device))


def prompts(lm: LoadedModel, query: Query, settings: RunSettings | None = None) -> list[ChoicePrompt]:
    """The query's multiple-choice prompts for this model (Sec. 4.1): one per template, options shuffled."""
    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.settings import RunSettings

    s = settings or RunSettings()
    return NeuronAttribution(lm, s.attribution, s.prompt).prompts(query)


def attribute(lm: LoadedModel, query: Query, settings: RunSettings | None = None) -> QueryAttribution:
    """Each template's integrated-gradients attribution of every FFN neuron (Eq. 5 before Z), with the answer-position
    activations and the correct letter's probability."""
    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.settings import RunSettings

    s = settings or RunSettings()
    return NeuronAttribution(lm, s.attribution, s.prompt).attribute(query)


def tables(run: str, db: str | os.PathLike | None = None) -> dict[str, pd.DataFrame]:
    """A finished run's report tables by name (accuracy, qr_neurons, stability, and once evaluated pcr, changes,
    flips, answer_prediction, group_prediction), as `qrn report` writes them."""
    from qrcore import store
    from qrcore.evaluation.report import run_tables

    with store.connect(db, read_only=True) as con:
        return run_tables(con, store.complete_run(con, run))[0]


def qr_neurons(run: str, db: str | os.PathLike | None = None, method: str = "qrnca") -> pd.DataFrame:
    """Every query's QR neurons of a finished run (query_id, rank, layer, neuron, score), or a baseline's (`method`)."""
    from qrcore import store

    with store.connect(db, read_only=True) as con:
        return store.qr_neurons(con, store.complete_run(con, run).run_id, method)


def contrast(
    run: str, first: str, second: str, by: ContrastScore = "naica", db: str | os.PathLike | None = None
) -> pd.DataFrame:
    """The neurons that separate two groups of a finished run, most separating first: each group's mean NAICA (Eq. 7;
    by="na": NA, Eq. 5) over its queries and cluster share, and `difference` = first minus second."""
    from qrcore import store
    from qrcore.evaluation.run_analyses import group_contrast
    from qrcore.selection.contrast import Pair

    with store.connect(db, read_only=True) as con:
        return group_contrast(con, store.complete_run(con, run).run_id, Pair(first, second), by)


def score_against_run(lm: LoadedModel, query: Query, run: str, db: str | os.PathLike | None = None) -> pd.DataFrame:
    """A question of your own attributed under a run's settings and scored against its clusters (ICA, common neurons,
    NAICA, Eq. 6-7): its stored-style rows, kept = QR neuron, highest NAICA first."""
    from qrcore import store
    from qrcore.selection.custom import score_against_run as score

    with store.connect(db, read_only=True) as con:
        info = store.complete_run(con, run)
        store.require_model(info, lm.spec.name, lm.fingerprint)
        counts, n_clusters = store.cluster_counts(con, info.run_id)
    return score(attribute(lm, query, info.settings), counts, n_clusters, info.settings.qrnca)


def save_edit(path: str | os.PathLike, lm: LoadedModel, edit: Mapping[tuple[int, int], float]) -> None:
    """Write an edit ((layer, neuron) -> multiplier) as a JSON or CSV edit file (by the suffix) tied to this model."""
    import pandas as pd

    from qrcore.editing.edits import EDIT, dump, parse, to_edit
    from qrcore.editing.scaling import check_neurons

    check_neurons(lm, edit)
    rows: Sequence[tuple[int, int, float]] = [(layer, neuron, mult) for (layer, neuron), mult in edit.items()]
    neurons = pd.DataFrame(rows, columns=["layer", "neuron", "multiplier"])
    meta = {"model": lm.spec.name, "model_fingerprint": lm.fingerprint}
    text = dump(EDIT, meta, neurons, "csv" if str(path).lower().endswith(".csv") else "json")
    to_edit(*parse(text, str(path)), None, str(path))  # refused as `load_edit` would refuse it, before writing
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
