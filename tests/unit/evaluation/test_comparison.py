"""`qrn report` with two runs: each run's numbers side by side, exactly as its own report has them; bad pairs refused."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from qrcore import store
from qrcore.cli import main
from qrcore.evaluation import run_analyses
from qrcore.evaluation.report import COMPARED, write_comparison, write_report
from tests.seeded_store import DEEP_RUN, RUN, seed_store

pytestmark = pytest.mark.integration  # two attributed runs built first: seconds


def test_comparison_puts_each_runs_own_numbers_side_by_side(seeded_two, tmp_path):
    report = write_comparison([RUN, DEEP_RUN], str(seeded_two), str(tmp_path))
    folder = tmp_path / f"{RUN}_vs_{DEEP_RUN}"
    assert report.paths[0] == folder / "report.md" and report.missing is None
    text = report.paths[0].read_text()
    assert text.startswith(f"# Runs {RUN}, {DEEP_RUN} on dataset tiny-set\n")
    runs = pd.read_csv(folder / "runs.csv")
    assert runs["model"].tolist() == ["tiny-llama", "tiny-gemma3"]
    assert runs["layers x neurons"].tolist() == ["4 x 96", "6 x 128"]
    for run in (RUN, DEEP_RUN):  # every compared table holds the run's own report's numbers, row for row
        own = tmp_path / "own" / run
        write_report(run, str(seeded_two), str(tmp_path / "own"))
        for name, (keys, values) in COMPARED.items():
            mine = pd.read_csv(own / f"{name}.csv").set_index(keys)[values]
            side = pd.read_csv(folder / f"{name}.csv").set_index(keys)[[f"{run}: {v}" for v in values]]
            assert np.allclose(side.loc[mine.index].to_numpy(), mine.to_numpy(), equal_nan=True), (run, name)
    localisation = pd.read_csv(folder / "localisation.csv").set_index("QR neurons")
    with store.connect(seeded_two, read_only=True) as con:
        deep = run_analyses.localisation(con, store.run_info(con, DEEP_RUN).run_id)
    assert np.isclose(
        localisation.loc["mean relative depth of QR neurons (0 first layer, 1 last)", DEEP_RUN], deep["mean_depth"]
    )
    assert "## pcr" in text and f"| method | evaluation | {RUN}: all | {DEEP_RUN}: all |" in text
    share = localisation.loc["share of all FFN neurons that are QR neurons", DEEP_RUN]
    assert "| share of all FFN neurons that are QR neurons | " in text and f"{share:.3g} |" in text


def test_cli_compares_two_runs_and_refuses_a_repeated_run_or_two_datasets(seeded_two, tiny, tmp_path, capsys):
    db = tmp_path / "qrn.duckdb"
    shutil.copy(seeded_two, db)
    out = tmp_path / "reports"
    assert main(["report", "--run", RUN, "--run", DEEP_RUN, "--db", str(db), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(out / f"{RUN}_vs_{DEEP_RUN}" / "report.md")

    assert main(["report", "--run", RUN, "--run", RUN, "--db", str(db), "--out", str(tmp_path / "r2")]) == 2
    assert capsys.readouterr().err == (
        f"qrn: error: runs to compare must differ, and {RUN}, {RUN} repeats one; name two or more runs\n"
    )
    seed_store(db, tiny("llama"), run="elsewhere", dataset="other-set")
    assert main(["report", "--run", RUN, "--run", "elsewhere", "--db", str(db), "--out", str(tmp_path / "r3")]) == 2
    assert capsys.readouterr().err == (
        f"qrn: error: runs to compare must be on one dataset, and {RUN} is on tiny-set, elsewhere is on other-set; "
        "pick runs of one dataset\n"
    )
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()  # nothing written
