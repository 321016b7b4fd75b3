"""A run's stability end to end on a tiny model: perturbed runs, the table, the report and the command."""

from __future__ import annotations

import pytest

from qrcore import store
from qrcore.cli import main
from qrcore.evaluation.report import write_report
from qrcore.runs.batch import run_dataset
from qrcore.runs.stability import perturb, stability_table
from qrcore.selection.stability import leave_one_template_out, stability


@pytest.fixture(scope="module")
def perturbed(tiny, tmp_path_factory) -> str:
    """A tiny run of 2 x 2 domain queries and its two perturbed runs on one query of each group."""
    db = str(tmp_path_factory.mktemp("stability") / "s.duckdb")
    lm = tiny("llama")
    run_dataset(lm, "domain", db, name="r", groups=["biology", "physics"], per_group=2)
    assert perturb(lm, "r", db, per_group=1) == ["r:seed1", "r:gauss_legendre-32"]
    return db


def test_the_table_has_each_template_left_out_and_each_perturbed_run(perturbed):
    with store.connect(perturbed, read_only=True) as con:
        info = store.run_info(con, "r")
        table = stability_table(con, info).set_index(["perturbation", "group_name"])
        rows, ig = store.stored_rows(con, info.run_id)
        groups = store.run_groups(con, info.run_id)
    assert sorted(table.index.get_level_values(0).unique()) == [
        "gauss_legendre-32",
        "seed1",
        "without template 1",
        "without template 2",
        "without template 3",
    ]
    assert table.loc[("seed1", "all"), "queries"] == 2 and table.loc[("without template 1", "all"), "queries"] == 4
    assert table.loc[("seed1", "biology"), "queries"] == 1
    direct = stability(rows, leave_one_template_out(rows, ig, info.settings.qrnca), groups, info.settings.qrnca)
    expected = direct.by_group(groups).set_index(["perturbation", "group_name"])
    assert table.loc[expected.index, "qr_jaccard"].tolist() == pytest.approx(expected["qr_jaccard"].tolist())
    assert table[["cluster_jaccard", "qr_jaccard", "qr_kept"]].stack().between(0, 1).all()


def test_report_and_command_show_the_stability_table(perturbed, tmp_path, capsys):
    report = write_report("r", perturbed, str(tmp_path)).paths[0].read_text()
    assert "## stability" in report and "| seed1 | all | 2 |" in report
    assert main(["stability", "--run", "r", "--model", "tiny-llama", "--per-group", "1", "--db", perturbed]) == 0
    out = capsys.readouterr().out
    assert "gauss_legendre-32" in out and "without template 3" in out
    assert main(["stability", "--run", "nope", "--model", "tiny-llama", "--db", perturbed]) == 2
    assert "no run 'nope' in this store" in capsys.readouterr().err
