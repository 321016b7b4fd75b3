"""Shared fixtures: the default model's tokenizer (offline), tiny seeded models of each architecture, the explorer's
seeded stores, and the explorer served to a real browser."""

from __future__ import annotations

from collections.abc import Iterator
import os
from pathlib import Path
import shutil

import pytest

from app_driver import app_on_copy
from browser_driver import CHROMIUM, open_page, streamlit_server
from qrcore.model.load import embedded_folder
from qrcore.model.spec import DEFAULT_MODEL
from repo import REPO
from seeded_store import DEEP_RUN, MODEL, seed_store

os.environ.setdefault("QRN_CACHE", str(REPO / "cache"))


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer (with chat template), from the cached conversion of the embedded default model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_folder(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """tiny(arch) -> a LoadedModel of that architecture, built once per session from a seeded config."""
    from qrcore.model.tiny import tiny_model

    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = tiny_model(arch, tokenizer)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (slow tests only)."""
    from qrcore.model.load import load_model

    return load_model()


# --- the explorer's stores (AppTest and browser tests) ---------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny) -> Path:
    """A finished tiny-llama run in a store of its own, shared by the module's tests (read-only)."""
    path = tmp_path_factory.mktemp("store") / "qrn.duckdb"
    seed_store(path, tiny("llama"))
    return path


@pytest.fixture(scope="module")
def seeded_two(tmp_path_factory, tiny) -> Path:
    """The same dataset's runs of two tiny models of different depth (4 x 96 and 6 x 128) in a store of their own."""
    path = tmp_path_factory.mktemp("store2") / "qrn.duckdb"
    seed_store(path, tiny("llama"))
    seed_store(path, tiny("gemma3"), run=DEEP_RUN)
    return path


@pytest.fixture
def db(seeded: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the one-model store, and the app pointed at it."""
    return app_on_copy(seeded, tmp_path, monkeypatch)


@pytest.fixture
def two(seeded_two: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the two-model store, and the app pointed at it."""
    return app_on_copy(seeded_two, tmp_path, monkeypatch)


# --- the explorer in a real browser (slow tests) -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory, seeded_two: Path) -> dict[str, str]:
    """The app's environment on a copy of the two-model store."""
    db = tmp_path_factory.mktemp("browser-store") / "qrn.duckdb"
    shutil.copy(seeded_two, db)
    return {**os.environ, "QRN_MODEL": MODEL, "QRN_DB": str(db), "QRN_SHIPPED": "0"}


@pytest.fixture(scope="module")
def server(tiny_env) -> Iterator[str]:
    """The app on the tiny store, or on QRN_SCREENSHOT_DB with QRN_SCREENSHOT_MODEL (the README's screenshots)."""
    env = (
        tiny_env
        if "QRN_SCREENSHOT_DB" not in os.environ
        else {
            **os.environ,
            "QRN_DB": os.environ["QRN_SCREENSHOT_DB"],
            "QRN_MODEL": os.environ.get("QRN_SCREENSHOT_MODEL", MODEL),
        }
    )
    with streamlit_server(env) as url:
        yield url


@pytest.fixture(scope="module")
def tiny_server(server, tiny_env) -> Iterator[str]:
    """The app on the tiny two-model store: `server` itself, unless that one shows the screenshot store."""
    if "QRN_SCREENSHOT_DB" not in os.environ:
        yield server
        return
    with streamlit_server(tiny_env) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server: str):
    """Headless chromium (Debian's), warmed up on the main page: Streamlit answers a first visit to another page
    with a spurious 'Page not found' (streamlit/streamlit#9992)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing; install it once with `apt-get update && apt-get install -y chromium` "
            "(as root), then rerun."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        open_page(page, server, "")
        page.close()
        yield context
        chromium.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration is in the integration tier (`-m integration`), beside the unit tests marked
    so because they need seconds of model forwards or processes."""
    for item in items:
        if item.path.is_relative_to(REPO / "tests" / "integration"):
            item.add_marker(pytest.mark.integration)
