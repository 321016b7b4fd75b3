"""The public API (`import qrcore as qr`): lazy, documented, and every step of a notebook on a tiny model."""

from __future__ import annotations

import os
from pathlib import Path
import re
import subprocess
import sys

import numpy as np
import pytest

import qrcore as qr
from repo import REPO


def test_help_lists_the_api_and_importing_loads_nothing_heavy():
    script = (
        "import sys, pydoc, qrcore as qr\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'duckdb', 'transformers')))\n"
        "print(qr.QRNCASettings().v, 'torch' in sys.modules)\n"
        "text = pydoc.render_doc(qr, renderer=pydoc.plaintext)\n"
        "print(all(f'qr.{n}' in text for n in ('load', 'attribute', 'run', 'evaluate', 'tables', 'edited')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split("\n")
    assert out[:3] == ["[]", "20 False", "True"]  # a lazy name imports only its own module; help lists the API
    assert set(qr.__all__) <= set(dir(qr))
    with pytest.raises(AttributeError, match="module 'qrcore' has no attribute 'nope'"):
        qr.nope  # noqa: B018


def test_a_notebook_on_a_tiny_model(tmp_path):
    db = str(tmp_path / "qrn.duckdb")
    lm = qr.load("tiny-llama")
    q = qr.query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris")
    result = qr.attribute(lm, q)
    assert result.ig.shape[0] == 3 and len(qr.top_neurons(qr.query_na(result.ig, qr.QRNCASettings()).na, 5)) == 5
    qr.run(lm, "domain", db, name="demo", groups=["biology", "physics"], per_group=2)
    tables = qr.tables("demo", db)
    assert {"accuracy", "qr_neurons", "stability"} <= set(tables) and "pcr" not in tables
    neurons = qr.qr_neurons("demo", db)
    assert set(neurons["query_id"]) <= set(qr.qr_neurons("demo", db, method="kn")["query_id"]) | {None}
    separating = qr.contrast("demo", "biology", "physics", db=db)
    assert separating["difference"].abs().is_monotonic_decreasing and separating["difference"].iloc[0] != 0
    with pytest.raises(qr.QRNError, match="the run has no group 'chemistry'"):
        qr.contrast("demo", "biology", "chemistry", db=db)
    mine = qr.score_against_run(lm, q, "demo", db)
    assert mine["kept"].sum() >= 1 and list(mine["naica"]) == sorted(mine["naica"], reverse=True)
    layer, neuron = int(neurons["layer"].iloc[0]), int(neurons["neuron"].iloc[0])
    qr.save_edit(tmp_path / "edit.json", lm, {(layer, neuron): 0.0})
    edit = qr.load_edit(tmp_path / "edit.json")
    prompts = qr.prompts(lm, q)
    assert np.allclose(qr.letter_probs(lm, prompts, edit), qr.letter_probs(lm, prompts, {(layer, neuron): 0.0}))
    with qr.open_store(db, read_only=True) as con:
        assert list(qr.store.list_runs(con)["name"]) == ["demo"]
    with pytest.raises(qr.QRNError, match="multiplier"):
        qr.save_edit(tmp_path / "bad.json", lm, {(layer, neuron): float("inf")})
    assert not (tmp_path / "bad.json").exists()


def readme_python() -> str:
    """The README's notebook section: its one python block."""
    section = (REPO / "README.md").read_text().split("## Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readmes_notebook_section_runs_as_written(tmp_path):
    assert "import qrcore as qr" in readme_python() and "from qrcore." not in readme_python()
    env = {**os.environ, "QRN_DB": str(tmp_path / "qrn.duckdb"), "QRN_CACHE": str(REPO / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", readme_python()], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(tmp_path / "edit.json").exists() and "QR neurons" in out.stdout
