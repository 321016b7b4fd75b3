"""Perturbed runs of a run and its QR neurons' stability (`qrcore.selection.stability`), from the store.

A run R's perturbations are: each template left out (from R's stored per-template IG, no model), and the finished
runs named `R:<what>` in the same store, each a sample of R's queries computed another way. `perturb` computes the
two the README reports: `R:seed1` (another option-shuffling seed) and `R:gauss_legendre-32` (the integral by a
32-node Gauss-Legendre rule instead of the authors' 16 points).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from qrcore import store
from qrcore.errors import QRNError
from qrcore.progress import Progress
from qrcore.selection.stability import ROWS, Stability, leave_one_template_out, stability
from qrcore.settings import AttributionSettings, RunSettings

if TYPE_CHECKING:  # torch is imported by `perturb` alone, so that the explorer reads stability without it
    from qrcore.model.spec import LoadedModel

SEPARATOR = ":"
"""Between a run's name and the name of its perturbation."""


def perturbed_settings(settings: RunSettings) -> dict[str, RunSettings]:
    """The settings of the perturbed runs `perturb` computes, by the suffix of their names."""
    return {
        f"seed{settings.prompt.seed + 1}": replace(
            settings, prompt=replace(settings.prompt, seed=settings.prompt.seed + 1)
        ),
        "gauss_legendre-32": replace(settings, attribution=AttributionSettings(32, "gauss_legendre")),
    }


def perturb(lm: LoadedModel, run: str, db: str | None, per_group: int, progress: Progress | None = None) -> list[str]:
    """Compute (or resume) the perturbed runs of the finished run `run` on its first `per_group` queries of each
    group; returns their names."""
    from qrcore.runs.batch import run_dataset

    with store.connect(db, read_only=True) as con:
        info = store.complete_run(con, run)
        store.require_model(info, lm.spec.name, lm.fingerprint)
        runs = store.list_runs(con)
    dataset = runs.loc[runs["run_id"] == info.run_id, "dataset"].iloc[0]
    names = []
    for suffix, settings in perturbed_settings(info.settings).items():
        name = f"{info.name}{SEPARATOR}{suffix}"
        run_dataset(lm, dataset, db, name=name, settings=settings, per_group=per_group, progress=progress)
        names.append(name)
    return names


def run_stability(con: duckdb.DuckDBPyConnection, info: store.RunInfo) -> Stability:
    """The run's stability under leaving each template out and under its finished perturbed runs in the store."""
    rows, ig = store.stored_rows(con, info.run_id)
    groups = store.run_groups(con, info.run_id)
    try:
        perturbations = leave_one_template_out(rows, ig, info.settings.qrnca)
    except QRNError:  # a run with one template, without stored IG or with another Z: its perturbed runs only
        perturbations = {}
    runs = store.list_runs(con)
    prefix = f"{info.name}{SEPARATOR}"
    for name in runs.loc[runs["name"].str.startswith(prefix) & (runs["status"] == "finished"), "name"]:
        other = store.run_info(con, name)
        if other.model_id == info.model_id:
            sample, _ = store.stored_rows(con, other.run_id)
            perturbations[name.removeprefix(prefix)] = sample.loc[sample["query_id"].isin(groups), ROWS]
    return stability(rows, perturbations, groups, info.settings.qrnca)


def stability_table(con: duckdb.DuckDBPyConnection, info: store.RunInfo) -> pd.DataFrame:
    """Per perturbation and group: queries, mean cluster and QR-neuron Jaccard and share of QR neurons kept."""
    return run_stability(con, info).by_group(store.run_groups(con, info.run_id))
