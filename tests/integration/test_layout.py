"""The layout's rules: no import cycle among the project's modules, and an engine that imports no UI and, on import,
loads no model and opens no store."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
import os
from pathlib import Path
import subprocess
import sys

import pytest

from repo import REPO

PACKAGES = ("qrcore", "explorer", "qrbench")


def module_names(package: str) -> list[str]:
    """Dotted names of every module of `package` in the source tree."""
    root = REPO / package
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")
    )


def imported(module: str, known: set[str]) -> set[str]:
    """The project modules `module` imports anywhere in its file (functions included): a cycle through an import
    inside a function is still a cycle of the design."""
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != module}


def test_no_import_cycle():
    known = {m for p in PACKAGES for m in module_names(p)}
    graph = {m: imported(m, known) - {p for p in PACKAGES} for m in known}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert set(order) == known


def test_importing_the_engine_loads_no_ui_no_model_and_opens_no_store(tmp_path):
    modules = module_names("qrcore")
    script = (
        f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'plotly')))\n"
        "print(sorted(m for m in sys.modules if m.startswith('transformers.models.')))"
    )
    env = {
        **os.environ,
        "QRN_DB": str(tmp_path / "qrn.duckdb"),
        "QRN_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert out == ["[]", "[]"], out  # no UI module, no model architecture
    assert list(tmp_path.iterdir()) == []  # no store, no cache folder


STAGES = ("model", "data", "attribution", "selection", "editing", "store", "runs", "evaluation")
"""The engine's stages in the order data flows through them; a stage imports only from itself and earlier ones."""
TOP = ("qrcore", "qrcore.cli")
"""The package itself (its lazy public API) and the command line: they may import any stage."""


def stage(module: str) -> int | None:
    """The position in STAGES of a qrcore module's stage; None for a shared module (settings, errors, ...)."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def backward_imports() -> list[str]:
    """Every import of the engine that runs against the stage order, as 'importer -> imported'."""
    known = set(module_names("qrcore"))
    found = []
    for module in sorted(known - set(TOP)):
        for target in sorted(imported(module, known)):
            here, there = stage(module), stage(target)
            if there is not None and (here is None or there > here):
                found.append(f"{module} -> {target}")
    return found


def test_stages_import_only_from_earlier_stages():
    assert stage("qrcore.selection.qrnca") == 3 and stage("qrcore.settings") is None
    assert backward_imports() == []


def add_import(monkeypatch: pytest.MonkeyPatch, importer: str, target: str) -> None:
    """Make `imported` say that `importer` also imports `target`, to test the checks themselves."""
    real = imported
    monkeypatch.setitem(globals(), "imported", lambda m, known: real(m, known) | ({target} if m == importer else set()))


def test_a_backward_stage_import_is_caught(monkeypatch):
    """The check itself: an attribution module that imports the selection stage (as precision.py once did) fails."""
    add_import(monkeypatch, "qrcore.attribution.ig", "qrcore.selection.qrnca")
    assert backward_imports() == ["qrcore.attribution.ig -> qrcore.selection.qrnca"]


COMPUTING = ("attribution", "selection", "editing")
"""The stages that compute; the store only reads and writes rows, so it imports none of them (and, by the stage
order, no later stage): what it writes is computed in `qrcore.runs`, what is drawn from its rows in `qrcore.evaluation`."""


def store_imports_of_computing_stages() -> list[str]:
    """Every import of a computing stage by a store module, as 'importer -> imported'."""
    known = set(module_names("qrcore"))
    return [
        f"{module} -> {target}"
        for module in sorted(known)
        if stage(module) == STAGES.index("store")
        for target in sorted(imported(module, known))
        if (there := stage(target)) is not None and STAGES[there] in COMPUTING
    ]


def test_the_store_imports_no_stage_that_computes():
    assert store_imports_of_computing_stages() == []


def test_a_store_import_of_a_computing_stage_is_caught(monkeypatch):
    """The check itself: a store reader that imports the selection stage (as reads.py once did) fails."""
    add_import(monkeypatch, "qrcore.store.reads", "qrcore.selection.live")
    assert store_imports_of_computing_stages() == ["qrcore.store.reads -> qrcore.selection.live"]
