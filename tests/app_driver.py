"""The explorer driven through streamlit.testing's AppTest: pages opened as a shared link opens them, their errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
import shutil

import numpy as np
from streamlit.testing.v1 import AppTest

from markdown_view import shown
from repo import REPO
from seeded_store import MODEL

APP = REPO / "explorer" / "app.py"
PAGES = ("heatmaps", "overlap", "common", "lab", "methods", "compare", "contrast", "data", "search")


def page(name: str, sidebar: bool = False, **params: str) -> AppTest:
    """The app opened straight on page `name` (a file under explorer/pages) with link parameters `params`, as a
    shared link opens it; with `sidebar`, after a first run of the main page, since AppTest draws app.py's sidebar
    (the model and run pickers) only from the second run on."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(params)
    if sidebar:
        at.run()
    return at.switch_page(f"sections/{name}.py").run()


def errors(at: AppTest) -> list[str]:
    """The texts of the inline errors on the page, as shown."""
    return [shown(e.value) for e in at.error]


def button(at: AppTest, label: str):
    """The button labelled `label`."""
    return next(b for b in at.button if b.label == label)


def plot_strings(at: AppTest) -> list[str]:
    """Every string in the page's plotly figures (labels, titles, hover text), which plotly reads as HTML."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for chart in at.get("plotly_chart"):
        walk(json.loads(chart.proto.spec))
    return found


def typed(value: dict | list) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {dtype, bdata (base64), shape}."""
    if isinstance(value, list):
        return np.asarray(value)
    flat = np.frombuffer(base64.b64decode(value["bdata"]), np.dtype(value["dtype"]))
    return flat.reshape([int(n) for n in str(value.get("shape", len(flat))).split(",")])


def app_on_copy(store_file: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of `store_file`, and the app pointed at it and started on the tiny model."""
    path = tmp_path / "qrn.duckdb"
    shutil.copy(store_file, path)
    monkeypatch.setenv("QRN_DB", str(path))
    monkeypatch.setenv("QRN_MODEL", MODEL)
    monkeypatch.setenv("QRN_SHIPPED", "0")
    return path
