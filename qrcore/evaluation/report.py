"""`qrn report`: a run's tables (accuracy, PCR, flip rates, answer and group prediction, with a model the vocabulary
projections of Table 5) as Markdown and CSV files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from qrcore import store
from qrcore.atomic import files_into
from qrcore.editing.vocab import project_neurons
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.markdown import escaped
from qrcore.model.tokens import quoted
from qrcore.names import safe_name
from qrcore.outputs import make_folder
from qrcore.runs.stability import stability_table
from qrcore.selection import analysis
from qrcore.selection.qrnca import METHOD_NAMES, METHODS

if TYPE_CHECKING:
    from qrcore.model.spec import LoadedModel


def markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table of a DataFrame (no extra dependency); text cells and headers show as written."""

    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else escaped(v)

    head = "| " + " | ".join(map(escaped, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def accuracy_table(groups: pd.DataFrame) -> pd.DataFrame:
    """`store.group_accuracy` rows and an 'all' row over every query: share of templates answered right, P(correct)."""
    weights = groups["queries"]
    means = {c: float((groups[c] * weights).sum() / weights.sum()) for c in ("accuracy", "correct_prob")}
    return pd.concat(
        [groups, pd.DataFrame([{"group_name": "all", "queries": weights.sum(), **means}])], ignore_index=True
    )


def pcr_table(evals: pd.DataFrame) -> pd.DataFrame:
    """Table 4: rows method x edit, columns groups and 'all', cells PCR."""
    pcr = evals[evals["metric"] == "pcr"]
    table = pcr.pivot_table(index=["method", "evaluation"], columns="group_name", values="value", sort=False)
    order = [m for m in METHODS if m in table.index.get_level_values(0)]
    return table.reindex(order, level=0).reset_index()


def metric_table(evals: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows method x edit, one column per metric, over all groups."""
    part = evals[evals["metric"].isin(metrics) & (evals["group_name"] == "all")]
    return part.pivot_table(index=["method", "evaluation"], columns="metric", values="value", sort=False).reset_index()


PREDICTION_REFERENCES = ("prompt_accuracy", "chance")
"""Table 7's reference rows beside the neuron-based accuracy: the model's own prompt-based accuracy, random guess."""


def by_method(rows: pd.DataFrame, columns: str | list[str], order: tuple[str, ...] = METHODS) -> pd.DataFrame:
    """Evaluation rows pivoted to one line per method (in `order`) and one column per `columns` value."""
    table = rows.pivot_table(index="method", columns=columns, values="value", aggfunc="first", sort=False)
    return table.reindex([m for m in order if m in table.index])


def answer_prediction_rows(evals: pd.DataFrame) -> pd.DataFrame:
    """Table 7's rows: each method's neuron-based accuracy per group, then the references as methods of their own."""
    part = evals[evals["evaluation"] == "answer_prediction"]
    reference = part[(part["method"] == METHODS[0]) & part["metric"].isin(PREDICTION_REFERENCES)]
    return pd.concat([part[part["metric"] == "accuracy"], reference.assign(method=reference["metric"])])


def answer_prediction_table(evals: pd.DataFrame) -> pd.DataFrame:
    """Table 7: rows the methods' neuron-based accuracy, then prompt-based accuracy and chance; columns the groups."""
    rows = answer_prediction_rows(evals)
    return by_method(rows, "group_name", (*METHODS, *PREDICTION_REFERENCES)).reset_index()


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote: report.md, then one CSV per table; `missing` names what a later step would add."""

    paths: list[Path]
    missing: str | None = None


def run_tables(con: duckdb.DuckDBPyConnection, info: store.RunInfo) -> tuple[dict[str, pd.DataFrame], str | None]:
    """A finished run's tables by name; the edit tables only once it is evaluated, else the note saying how."""
    evals = store.evaluations(con, info.run_id)
    tables = {
        "accuracy": accuracy_table(store.group_accuracy(con, info.run_id)),
        "qr_neurons": analysis.qr_counts(store.qr_neurons(con, info.run_id), store.run_groups(con, info.run_id)),
    }
    stability = stability_table(con, info)
    if not stability.empty:
        tables["stability"] = stability
    if evals.empty:
        return tables, (
            f"run {info.name!r} has no evaluations yet, so the report has no PCR, flip or prediction tables; "
            f"compute them with `qrn evaluate --run {info.name}`"
        )
    return tables | {
        "pcr": pcr_table(evals),
        "changes": metric_table(evals, ["related_change", "unrelated_change"]),
        "flips": metric_table(evals, ["correct_to_incorrect", "incorrect_to_correct"]),
        "answer_prediction": answer_prediction_table(evals),
        "group_prediction": metric_table(evals[evals["evaluation"] == "group_prediction"], ["accuracy"]),
    }, None


VOCAB_TOKENS = 8
"""Tokens shown per neuron in Table 5's projections."""
SHARED_PER_GROUP = 3
"""Table 5's neurons of each group: its QR neurons shared by the most of its queries."""


def with_tokens(lm: LoadedModel, neurons: pd.DataFrame) -> pd.DataFrame:
    """`neurons` (layer and neuron columns) with `tokens`: its top `VOCAB_TOKENS` vocabulary tokens (Table 5), quoted."""
    pairs = list(zip(neurons["layer"].astype(int), neurons["neuron"].astype(int)))
    projected = project_neurons(lm, pairs, VOCAB_TOKENS)
    return neurons.reset_index(drop=True).assign(tokens=[quoted(t) for t in projected["tokens"]])


def vocabulary_tables(lm: LoadedModel, con: duckdb.DuckDBPyConnection, info: store.RunInfo) -> dict[str, pd.DataFrame]:
    """Table 5 for a run, from its own model: the top tokens of the common neurons (`common_vocab`), and of each group's
    `SHARED_PER_GROUP` QR neurons that most of its queries share (`group_vocab`, with how many queries have each)."""
    store.require_model(info, lm.spec.name, lm.fingerprint)
    common = run_analyses.common_neurons(con, info.run_id)[["layer", "neuron", "n_clusters", "frequency"]]
    groups = store.run_groups(con, info.run_id)
    qr = store.qr_neurons(con, info.run_id)
    shared = (
        qr.assign(group_name=qr["query_id"].map(groups))
        .groupby(["group_name", "layer", "neuron"])
        .size()
        .rename("queries")
        .reset_index()
        .sort_values(["group_name", "queries", "layer", "neuron"], ascending=[True, False, True, True])
        .groupby("group_name")
        .head(SHARED_PER_GROUP)
    )
    return {"common_vocab": with_tokens(lm, common), "group_vocab": with_tokens(lm, shared)}


FLOAT_FORMATS = {"localisation": ".3g"}
"""Tables whose numbers need other than two decimals in report.md (a share of all neurons can be 0.001)."""


def write_tables(folder: Path, title: list[str], tables: dict[str, pd.DataFrame], missing: str | None) -> Report:
    """report.md (the title lines, the note, then each table under its name, methods under their paper names) and one
    CSV per table (method ids) in `folder`, all or none (`files_into`: a full disk leaves no partial file)."""
    text = [*title, *([escaped(f"{missing[0].upper()}{missing[1:]}."), ""] if missing else [])]
    with files_into(folder) as tmp:
        for name, frame in tables.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)
            named = frame.replace({"method": METHOD_NAMES}) if "method" in frame else frame
            text += [f"## {name}", "", markdown(named, FLOAT_FORMATS.get(name, ".2f")), ""]
        (tmp / "report.md").write_text("\n".join(text))
    return Report([folder / "report.md", *(folder / f"{name}.csv" for name in tables)], missing)


def write_report(run: str, db: str | None, out: str, lm: LoadedModel | None = None) -> Report:
    """Write report.md and one CSV per table under out/<run name>/ (`safe_name`: a name stored by an older qrn that
    breaks the name rule cannot leave `out`); with the run's model `lm`, Table 5's projections too.

    A run without evaluations still gets its accuracy and QR neuron counts; `missing` then says how to add the
    edit tables (an evaluation of a 1.5B model's set takes hours, and these tables are useful before it ends).
    """
    with store.connect(db, read_only=True) as con:
        info = store.complete_run(con, run)
        tables, missing = run_tables(con, info)
        if lm is not None:
            tables |= vocabulary_tables(lm, con, info)
        n_common = len(run_analyses.common_neurons(con, info.run_id))
    title = [
        f"# Run {escaped(info.name)}",
        "",
        f"Settings: {info.settings.summary()}",
        "",
        f"{n_common} common neurons in {info.n_clusters} clusters.",
        "",
    ]
    return write_tables(make_folder(Path(out) / safe_name(info.name)), title, tables, missing)


COMPARED = {
    "accuracy": (["group_name"], ["accuracy", "correct_prob"]),
    "qr_neurons": (["group_name"], ["mean_qr_neurons"]),
    "pcr": (["method", "evaluation"], ["all"]),
    "changes": (["method", "evaluation"], ["related_change", "unrelated_change"]),
    "flips": (["method", "evaluation"], ["correct_to_incorrect", "incorrect_to_correct"]),
    "answer_prediction": (["method"], ["all"]),
    "group_prediction": (["method", "evaluation"], ["accuracy"]),
}
"""A comparison's tables: each run's table of that name, rows matched on the first columns, the second ones side by
side (PCR and answer prediction over all groups; each run's own report has them per group)."""


def side_by_side(frames: dict[str, pd.DataFrame], keys: list[str], values: list[str]) -> pd.DataFrame:
    """One row per `keys` value (the first frame's order first), each frame's `values` as columns 'label: value'."""
    parts = [
        f.set_index(keys)[values].rename(columns=lambda c, label=label: f"{label}: {c}") for label, f in frames.items()
    ]
    return pd.concat(parts, axis=1, sort=False).reset_index()


def write_comparison(runs: list[str], db: str | None, out: str) -> Report:
    """Write two or more finished runs of one dataset side by side (report.md and a CSV per table) under
    out/<run>_vs_<run>/: how concentrated their QR neurons are (`analysis.localisation`), then accuracy, Table 3,
    PCR, changes, flip rates and prediction; the numbers behind the README's tables of both models."""
    with store.connect(db, read_only=True) as con:
        infos = [store.complete_run(con, run) for run in runs]
        names = [info.name for info in infos]
        if len(set(names)) < len(names):
            raise QRNError(f"runs to compare must differ, and {', '.join(names)} repeats one; name two or more runs")
        datasets = store.list_runs(con).set_index("name").loc[names, "dataset"]
        if datasets.nunique() > 1:
            raise QRNError(
                "runs to compare must be on one dataset, and "
                + ", ".join(f"{n} is on {d}" for n, d in datasets.items())
                + "; pick runs of one dataset"
            )
        each = {info.name: run_tables(con, info) for info in infos}
        common = [len(run_analyses.common_neurons(con, info.run_id)) for info in infos]
        localised = pd.DataFrame({info.name: run_analyses.localisation(con, info.run_id) for info in infos})
    runs_table = pd.DataFrame(
        {
            "run": names,
            "model": [info.model_name for info in infos],
            "layers x neurons": [f"{info.n_layers} x {info.n_neurons}" for info in infos],
            "clusters": [info.n_clusters for info in infos],
            "common neurons": common,
            "settings": [info.settings.summary() for info in infos],
        }
    )
    localisation = localised.rename(index=analysis.LOCALISATION).rename_axis("QR neurons").reset_index()
    missing = "; ".join(note for _, note in each.values() if note) or None
    tables = {"runs": runs_table, "localisation": localisation} | {
        name: side_by_side({run: tables[name] for run, (tables, _) in each.items()}, keys, values)
        for name, (keys, values) in COMPARED.items()
        if all(name in tables for tables, _ in each.values())
    }
    title = [f"# Runs {escaped(', '.join(names))} on dataset {escaped(datasets.iloc[0])}", ""]
    return write_tables(make_folder(Path(out) / safe_name("_vs_".join(names))), title, tables, missing)
