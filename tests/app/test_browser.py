"""The explorer in a real browser: `streamlit run` driven through Debian's chromium by Playwright.

Saves a screenshot of every page to cache/screenshots/ (or $QRN_SCREENSHOT_DIR). By default the app runs on a seeded store
of two tiny models of different depth; for the README, point QRN_SCREENSHOT_MODEL and QRN_SCREENSHOT_DB at the default
model and a store that holds its runs and those of a second model on the same dataset, and QRN_SCREENSHOT_IG_RUN at
one of its runs that keeps per-template IG (for template consistency).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from browser_driver import IDLE, METRIC, PAGES, REPO, open_page, settle
from qrcore.editing import edits
from seeded_store import DEEP_MODEL, DEEP_RUN, RUN

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("QRN_SCREENSHOT_DIR", REPO / "cache" / "screenshots"))
"""Where screenshots go; the README's are made with QRN_SCREENSHOT_DIR=docs/screenshots."""
IG_RUN = os.environ.get("QRN_SCREENSHOT_IG_RUN", RUN)
"""A run of the store that keeps per-template IG."""


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


def test_edit_evidence_scorecard_dose_response_and_streamed_answers(browser, server):
    page = browser.new_page()
    open_page(page, server, "lab?mult=0")
    page.get_by_role("button", name="Measure evidence").click()
    page.get_by_text("Per-neuron effects").wait_for(timeout=600_000)
    page.get_by_role("button", name="Generate free-form answers").click()
    page.get_by_text("Unedited", exact=True).wait_for(timeout=300_000)
    page.mouse.move(0, 0)  # no tooltip in the screenshot
    settle(page)
    assert page.locator("[data-testid=stDataFrame]").count() >= 5  # QR neurons, options, scorecard, flips, effects
    screenshot(page, "evidence")
    page.close()


def test_group_edit_on_the_heatmap_page(browser, server):
    page = browser.new_page()
    open_page(page, server, PAGES["heatmaps"])
    page.get_by_role("button", name="Suppress the group's neurons (x 0)").click()
    page.get_by_text("on its held-out queries").wait_for(timeout=600_000)
    page.mouse.move(0, 0)
    settle(page)
    screenshot(page, "group-edit")
    page.close()


def test_model_picker_is_in_the_link_and_the_run_picker_follows(browser, tiny_server):
    page = browser.new_page()
    open_page(page, tiny_server, "")
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=f"{DEEP_MODEL} · 1 run(s)").click()
    page.wait_for_function(
        f"() => new URLSearchParams(location.search).get('model') === '{DEEP_MODEL}'", timeout=60_000
    )
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
    key = next(c for c in first.get_attribute("class").split() if c.startswith("st-key-each-"))[len("st-key-") :]
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
    link = parse_qs(urlparse(page.url).query)
    assert "neuron" in link and link["model"] and link["run"]  # the clicked cell's model and run
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
