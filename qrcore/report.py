"""`qrn report`: a run's tables (PCR, flip rates, neuron-based prediction) as Markdown and CSV files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qrcore import store
from qrcore.errors import QRNError
from qrcore.outputs import make_folder
from qrcore.qrnca import METHODS


def markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table of a DataFrame (no extra dependency)."""
    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


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


def write_report(run: str, db: str | None, out: str) -> list[Path]:
    """Write report.md and one CSV per table under out/<run name>/; returns the paths."""
    with store.connect(db, read_only=True) as con:
        info = store.finished_run(con, run)
        evals = store.evaluations(con, info.run_id)
    if evals.empty:
        raise QRNError(f"run {info.name!r} has no evaluations yet; compute them with `qrn evaluate --run {info.name}`")
    folder = make_folder(Path(out) / info.name.replace("/", "_"))
    tables = {
        "pcr": pcr_table(evals),
        "changes": metric_table(evals, ["related_change", "unrelated_change"]),
        "flips": metric_table(evals, ["correct_to_incorrect", "incorrect_to_correct"]),
        "prediction": metric_table(evals, ["accuracy"]),
    }
    paths = []
    text = [f"# Run {info.name}", ""]
    for name, frame in tables.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
        text += [f"## {name}", "", markdown(frame), ""]
    md = folder / "report.md"
    md.write_text("\n".join(text))
    return [md, *paths]
