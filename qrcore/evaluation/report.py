"""`qrn report`: a run's tables (accuracy, PCR, flip rates, answer and group prediction) as Markdown and CSV files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qrcore import store
from qrcore.outputs import make_folder
from qrcore.selection import analysis
from qrcore.selection.qrnca import METHODS


def markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table of a DataFrame (no extra dependency)."""

    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
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


def write_report(run: str, db: str | None, out: str) -> Report:
    """Write report.md and one CSV per table under out/<run name>/.

    A run without evaluations still gets its accuracy and QR neuron counts; `missing` then says how to add the
    edit tables (an evaluation of a 1.5B model's set takes hours, and these tables are useful before it ends).
    """
    with store.connect(db, read_only=True) as con:
        info = store.finished_run(con, run)
        evals = store.evaluations(con, info.run_id)
        counts = analysis.qr_counts(store.read_qr_neurons(con, info.run_id), store.run_groups(con, info.run_id))
        n_common = len(store.read_common_neurons(con, info.run_id))
        accuracy = accuracy_table(store.group_accuracy(con, info.run_id))
    folder = make_folder(Path(out) / info.name.replace("/", "_"))
    tables = {"accuracy": accuracy, "qr_neurons": counts}
    missing = None
    if evals.empty:
        missing = (
            f"run {info.name!r} has no evaluations yet, so the report has no PCR, flip or prediction tables; "
            f"compute them with `qrn evaluate --run {info.name}`"
        )
    else:
        tables |= {
            "pcr": pcr_table(evals),
            "changes": metric_table(evals, ["related_change", "unrelated_change"]),
            "flips": metric_table(evals, ["correct_to_incorrect", "incorrect_to_correct"]),
            "answer_prediction": answer_prediction_table(evals),
            "group_prediction": metric_table(evals[evals["evaluation"] == "group_prediction"], ["accuracy"]),
        }
    paths = []
    text = [
        f"# Run {info.name}",
        "",
        f"Settings: {info.settings.summary()}",
        "",
        f"{n_common} common neurons in {info.n_clusters} clusters.",
        "",
        *([f"{missing[0].upper()}{missing[1:]}.", ""] if missing else []),
    ]
    for name, frame in tables.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
        text += [f"## {name}", "", markdown(frame), ""]
    md = folder / "report.md"
    md.write_text("\n".join(text))
    return Report([md, *paths], missing)
