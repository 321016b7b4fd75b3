"""The group-edit matrix: each group's scorecard stacked, and its diagonal beside the other groups' mean change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration  # every group's scorecard on a seeded run: seconds each


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory, tiny) -> str:
    """A finished tiny-llama run of three science and three geography queries (synthetic attributions)."""
    from seeded_store import seed_store

    path = tmp_path_factory.mktemp("group-edits") / "qrn.duckdb"
    seed_store(path, tiny("llama"))
    return str(path)


def test_matrix_rows_are_each_groups_scorecard_and_the_diagonal_reads_them(tiny, lab_db):
    from qrcore.evaluation import group_edits, lab
    from seeded_store import RUN

    lm, run = tiny("llama"), lab.read_lab(RUN, lab_db)
    edit = lab.ControlledEdit(0.0, 3, 0)
    seen = []
    matrix = group_edits.group_edit_matrix(lm, run, edit=edit, progress=lambda d, t, label: seen.append((d, t)))
    assert seen == [(0, 2), (1, 2), (2, 2)]
    assert list(matrix.columns) == group_edits.COLUMNS
    assert list(zip(matrix["edited"], matrix["measured"])) == [
        ("geography", "geography"),
        ("geography", "science"),
        ("science", "geography"),
        ("science", "science"),
    ]
    for group in ("geography", "science"):
        card = lab.group_scorecard(lm, run, group, edit=edit).table()
        rows = matrix[matrix["edited"] == group].reset_index(drop=True)
        for column in ("change", "control_low", "control_high", "p_value", "acc_after"):
            np.testing.assert_allclose(rows[column], card[column], rtol=1e-6, atol=1e-9)
    diagonal = group_edits.diagonal(matrix)
    science = matrix[matrix["edited"] == "science"].set_index("measured")
    assert diagonal.loc["science", "change"] == pytest.approx(science.loc["science", "change"])
    assert diagonal.loc["science", "others_change"] == pytest.approx(science.loc["geography", "change"])


def test_diagonal_means_the_other_groups_by_hand():
    matrix = pd.DataFrame(
        {
            "edited": ["a", "a", "a"],
            "measured": ["a", "b", "c"],
            "neurons": [5, 5, 5],
            "change": [-0.3, 0.1, -0.05],
            "control_low": [-0.01] * 3,
            "control_high": [0.02] * 3,
            "p_value": [0.1, 0.9, 0.5],
            "acc_before": [0.5] * 3,
            "acc_after": [0.2, 0.5, 0.5],
        }
    )
    from qrcore.evaluation.group_edits import diagonal

    row = diagonal(matrix).loc["a"]
    assert row["change"] == -0.3 and row["others_change"] == pytest.approx(0.025)


def test_qrn_lab_every_group_prints_the_matrix_writes_the_csv_and_refuses_a_bad_out(
    lab_db, tmp_path, capsys, monkeypatch
):
    from qrcore.cli import main
    from seeded_store import RUN

    args = ["lab", "--run", RUN, "--model", "tiny-llama", "--db", lab_db, "--controls", "2"]
    out = tmp_path / "matrix.csv"
    assert main([*args, "--every-group", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows: edited; columns: measured" in printed and "others_change" in printed
    matrix = pd.read_csv(out)
    assert sorted(zip(matrix["edited"], matrix["measured"])) == [
        ("geography", "geography"),
        ("geography", "science"),
        ("science", "geography"),
        ("science", "science"),
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["matrix.csv"]
    monkeypatch.setattr("qrcore.cli._load", lambda args: pytest.fail("a model was loaded"))
    assert main([*args, "--every-group", "--out", str(tmp_path / "no" / "m.csv")]) == 2
    assert "must be a .csv file in a folder that exists" in capsys.readouterr().err
    assert main([*args, "--group", "science", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "qrn: error: --out writes the table of --every-group; pass --every-group or leave --out out\n"
    )
    assert main([*args, "--every-group", "--sweep"]) == 2
    assert "pass --query instead of --group" in capsys.readouterr().err
