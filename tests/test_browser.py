"""The explorer in a real browser: `streamlit run` driven through Debian's chromium by Playwright.

Saves a screenshot of every page to cache/screenshots/ (or $QRN_SCREENSHOT_DIR). By default the app runs on a seeded store
of two tiny models of different depth; for the README, point QRN_SCREENSHOT_MODEL and QRN_SCREENSHOT_DB at the default
model and a store that holds its runs and those of a second model on the same dataset, and QRN_SCREENSHOT_IG_RUN at
one of its runs that keeps per-template IG (for template consistency).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import os
from pathlib import Path
import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlparse
import urllib.request

import pytest

from conftest_explorer import DEEP_MODEL, DEEP_RUN, MODEL, RUN, seed_store
from qrcore import edits

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "explorer" / "app.py"
SHOTS = Path(os.environ.get("QRN_SCREENSHOT_DIR", REPO / "cache" / "screenshots"))
"""Where screenshots go; the README's are made with QRN_SCREENSHOT_DIR=docs/screenshots."""
CHROMIUM = Path("/usr/bin/chromium")
PAGES = {"heatmaps": "", "overlap": "overlap", "common": "common", "lab": "lab", "methods": "methods",
         "compare": "compare", "data": "data"}
"""Screenshot name -> URL path (the default page is served at /)."""
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
METRIC = "[data-testid=stMetricValue]"
IG_RUN = os.environ.get("QRN_SCREENSHOT_IG_RUN", RUN)
"""A run of the store that keeps per-template IG."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Wait until the Streamlit server answers its health check; fail with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with code {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {timeout:.0f} s")


@contextmanager
def streamlit_server(env: dict[str, str]) -> Iterator[str]:
    """`streamlit run explorer/app.py` on a free port with environment `env`; its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
                             "--server.headless", "true"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://localhost:{port}"
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory, tiny) -> dict[str, str]:
    """The app's environment on a store of two tiny models' runs on one dataset (4 x 96 and 6 x 128)."""
    db = tmp_path_factory.mktemp("store") / "qrn.duckdb"
    seed_store(db, tiny("llama"))
    seed_store(db, tiny("gemma3"), run=DEEP_RUN)
    return {**os.environ, "QRN_MODEL": MODEL, "QRN_DB": str(db), "QRN_SEED": "0"}


@pytest.fixture(scope="module")
def server(tiny_env) -> Iterator[str]:
    """The app on the tiny store, or on QRN_SCREENSHOT_DB with QRN_SCREENSHOT_MODEL (the README's screenshots)."""
    env = tiny_env if "QRN_SCREENSHOT_DB" not in os.environ else {**os.environ, "QRN_DB": os.environ["QRN_SCREENSHOT_DB"],
                                                                  "QRN_MODEL": os.environ.get("QRN_SCREENSHOT_MODEL", MODEL)}
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
        pytest.fail(f"{CHROMIUM} is missing; install it once with `apt-get update && apt-get install -y chromium` "
                    "(as root), then rerun.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        open_page(page, server, "")
        page.close()
        yield context
        chromium.close()


def open_page(page, server: str, path: str) -> None:
    """Load a page and wait until its script has finished and its charts are drawn."""
    page.goto(f"{server}/{path}")
    settle(page)
    assert not page.locator("[data-testid=stException]").count(), page.locator("[data-testid=stException]").inner_text()


def settle(page) -> None:
    """Wait for the script run to end and the charts and tables to appear."""
    page.wait_for_selector(IDLE, timeout=120_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=stSkeleton]')", timeout=60_000)
    page.wait_for_timeout(1500)


def screenshot(page, name: str) -> None:
    """The whole page (Streamlit scrolls inside its main pane, so the viewport is stretched to the content first)."""
    height = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(900, height)})
    page.wait_for_timeout(800)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("name", [n for n in PAGES if n != "lab"])
def test_page_opens_and_is_captured(browser, server, name):
    page = browser.new_page()
    open_page(page, server, PAGES[name])
    assert page.locator("h1").first.inner_text()
    screenshot(page, name)
    page.close()


def slide(page, key: str, value: str, key_name: str = "ArrowRight") -> None:
    """Move the slider of widget `key` with the keyboard until it shows `value`."""
    slider = page.locator(f".st-key-{key} input[type=range]")
    for _ in range(100):  # one step at a time: a key pressed during a rerun can be undone when the rerun lands
        if slider.get_attribute("aria-valuetext") == value:
            return
        slider.focus()
        page.keyboard.press(key_name)
        page.wait_for_timeout(200)
        page.wait_for_selector(IDLE, timeout=60_000)
    pytest.fail(f"slider {key} did not reach {value}")


def wait_param(page, key: str, value: str) -> None:
    """Wait until the page link has ?key=value, then for the page to settle."""
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('{key}') === '{value}'", timeout=60_000)
    settle(page)


def download(page, label: str, tmp_path: Path) -> Path:
    """Click the download button labelled `label`; the downloaded file."""
    with page.expect_download() as info:
        page.get_by_role("button", name=label).click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_query_lab_slider_moves_the_probabilities(browser, server):
    page = browser.new_page()
    open_page(page, server, PAGES["lab"])
    before = page.locator(METRIC).nth(1).inner_text()
    slide(page, "mult", "2.00")
    wait_param(page, "mult", "2")
    assert page.locator(METRIC).nth(1).inner_text() != before
    screenshot(page, "lab")
    page.close()


def test_model_picker_is_in_the_link_and_the_run_picker_follows(browser, tiny_server):
    page = browser.new_page()
    open_page(page, tiny_server, "")
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=f"{DEEP_MODEL} · 1 run(s)").click()
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('model') === '{DEEP_MODEL}'",
                           timeout=60_000)
    settle(page)
    assert f"run={DEEP_RUN}" in page.url
    open_page(page, tiny_server, f"compare?model={DEEP_MODEL}")
    assert page.locator("h1").first.inner_text() == "Compare models"
    assert page.locator("[data-testid=stPlotlyChart]").count() >= 5
    page.close()


def test_per_neuron_slider_and_edit_file(browser, server, tmp_path):
    page = browser.new_page()
    open_page(page, server, PAGES["lab"])
    page.get_by_text("One multiplier per neuron").click()
    before = page.locator(METRIC).nth(1).inner_text()
    first = page.locator("[class*=st-key-each-]").first
    key = next(c for c in first.get_attribute("class").split() if c.startswith("st-key-each-"))[len("st-key-"):]
    slide(page, key, "0.00", "ArrowLeft")
    layer, neuron = key.split("-")[1:]
    wait_param(page, "each", f"{layer}:{neuron}*0")
    assert page.locator(METRIC).nth(1).inner_text() != before
    edit = edits.load_edit(download(page, "Edit as JSON", tmp_path))
    assert edit[(int(layer), int(neuron))] == 0.0 and set(edit.values()) == {0.0, 1.0}
    screenshot(page, "each")
    page.close()


def test_custom_question_gets_qrnca_against_the_run(browser, server):
    page = browser.new_page()
    open_page(page, server, "lab?source=custom")
    page.get_by_role("button", name="Run QRNCA").click()
    page.get_by_text("QRNCA against run").wait_for(timeout=300_000)
    page.mouse.move(0, 0)  # no tooltip in the screenshot
    settle(page)
    assert parse_qs(urlparse(page.url).query)["neurons"][0].count(":") > 0  # its QR neurons are selected for editing
    screenshot(page, "custom")
    page.close()


def test_heatmap_cell_opens_the_neuron_card(browser, server):
    page = browser.new_page()
    open_page(page, server, PAGES["heatmaps"])
    x, y = page.evaluate("""() => {  // the page position of the first non-zero cell's clickable marker
        const gd = document.querySelector('.js-plotly-plot'), t = gd._fullData[1], box = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [box.left + xa._offset + xa.d2p(t.x[0]), box.top + ya._offset + ya.d2p(t.y[0])]; }""")
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.get_by_text("Open the card of neuron").click(timeout=60_000)
    settle(page)
    assert page.locator("h1").first.inner_text() == "Neuron card"
    assert "neuron=" in page.url
    page.get_by_role("button", name="Compute its activation on all").click()
    page.locator("[data-testid=stPlotlyChart]").nth(1).wait_for(timeout=600_000)
    settle(page)
    screenshot(page, "card")
    page.close()


def test_live_thresholds_change_the_common_neurons(browser, server):
    page = browser.new_page()
    open_page(page, server, PAGES["common"])
    page.get_by_text("Live thresholds: t, u and v").click()
    before = page.locator(METRIC).first.inner_text()
    slide(page, "u", "0.15", "ArrowLeft")
    wait_param(page, "u", "0.15")
    assert page.locator(METRIC).first.inner_text() != before
    screenshot(page, "thresholds")
    page.close()


def test_template_consistency_page(browser, server):
    page = browser.new_page()
    open_page(page, server, f"consistency?run={IG_RUN}")
    assert page.get_by_text("Agreement per group").count() == 1
    screenshot(page, "consistency")
    page.close()


def test_neuron_set_downloads(browser, server, tmp_path):
    page = browser.new_page()
    open_page(page, server, "export?set=group")
    kind, meta, table = edits.parse(download(page, "Download CSV", tmp_path).read_text(), "csv")
    assert kind == edits.NEURON_SET and meta["set"].startswith("QR neurons of group") and len(table) > 0
    screenshot(page, "export")
    page.close()
