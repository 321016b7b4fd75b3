"""The paper's claim about groups made visible (issue 25 item 3): each group's neurons edited in turn, every group's
held-out queries measured beside matched random controls; the edited group should move and the others stay."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qrcore.evaluation.lab import ControlledEdit, LabRun, group_scorecard
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress

COLUMNS = [
    "edited",
    "measured",
    "neurons",
    "change",
    "control_low",
    "control_high",
    "p_value",
    "acc_before",
    "acc_after",
]
"""One row per (edited group, measured group): P(correct) change, the controls' 95% interval, the permutation p."""


def group_edit_matrix(
    lm: LoadedModel,
    lab: LabRun,
    groups: Sequence[str] | None = None,
    method: str = "qrnca",
    edit: ControlledEdit = ControlledEdit(),
    progress: Progress | None = None,
) -> pd.DataFrame:
    """`group_scorecard` of each of `groups` (default: all of the run's), stacked: COLUMNS, edited group by group."""
    rows = []
    chosen = list(groups or lab.groups())
    for i, group in enumerate(chosen):
        if progress:
            progress(i, len(chosen), f"group {group}")
        card = group_scorecard(lm, lab, group, method=method, edit=edit)
        table = card.table().rename(columns={"measure": "measured"})
        rows.append(table.assign(edited=group, neurons=len(card.neurons)))
    if progress:
        progress(len(chosen), len(chosen), "done")
    return pd.concat(rows, ignore_index=True)[COLUMNS]


def diagonal(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per edited group: its own held-out queries' change beside the controls' interval and p, and the mean change of
    the other groups (what the README's table shows)."""
    own = matrix[matrix["edited"] == matrix["measured"]].set_index("edited")
    others = matrix[matrix["edited"] != matrix["measured"]].groupby("edited")["change"].mean()
    return own[["neurons", "change", "control_low", "control_high", "p_value", "acc_before", "acc_after"]].assign(
        others_change=others
    )
