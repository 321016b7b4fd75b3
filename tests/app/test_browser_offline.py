"""The explorer in chromium makes no request off this machine (issue 29), and says so when a link names a page it does
not have. Uses test_browser's tiny two-model server and chromium."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

import pytest

from browser_driver import PAGES, open_page
from seeded_store import DEEP_MODEL, DEEP_RUN

pytestmark = pytest.mark.slow

EVERY_PAGE = [
    *PAGES.values(),
    "neuron",
    "consistency",
    "export",
    "heatmaps?mode=side+by+side",
    f"neuron?neuron=1:50&model={DEEP_MODEL}&run={DEEP_RUN}",
    "lab?source=custom",
]
"""Every page of the app (the default one at /), and a few views of them."""
WARNING = "[data-testid=stAlertContentWarning]"
"""An inline notice (st.warning)."""
ICONS = """() => [...document.querySelectorAll("link[rel~='icon']")].map(e => e.href)"""
"""The page's favicon addresses (set by script, and fetched by the browser outside the page's requests)."""


def on_this_machine(url: str) -> bool:
    """Whether `url` is inline data or names a loopback host."""
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    if parsed.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.hostname or "").is_loopback
    except ValueError:
        return False


def test_on_this_machine_tells_loopback_from_outside():
    assert on_this_machine("http://localhost:8501/_stcore/health") and on_this_machine("ws://127.0.0.1:9/x")
    assert on_this_machine("http://[::1]:8501/") and on_this_machine("data:image/svg+xml,<svg/>")
    assert not on_this_machine("https://fonts.gstatic.com/s/i/short-term/release/x/24px.svg")
    assert not on_this_machine("http://10.0.0.1/") and not on_this_machine("https://localhost.example.com/")


def test_no_page_requests_an_outside_address_or_shows_a_notice(browser, tiny_server):
    fetched: list[str] = []
    browser.on("request", lambda request: fetched.append(request.url))  # every page and worker of the context
    icons: list[str] = []
    for path in EVERY_PAGE:
        page = browser.new_page()
        page.on("websocket", lambda socket: fetched.append(socket.url))
        open_page(page, tiny_server, path)
        assert not page.locator(WARNING).count(), page.locator(WARNING).first.inner_text()  # a known page, good values
        icons += page.evaluate(ICONS)
        page.close()
    assert len(fetched) > 50 and any("/_stcore/stream" in url for url in fetched)  # requests were recorded
    assert icons and all(on_this_machine(icon) for icon in icons), icons
    assert not [url for url in fetched if not on_this_machine(url)]


def test_an_unknown_page_path_says_which_page_it_shows(browser, tiny_server):
    page = browser.new_page()
    open_page(page, tiny_server, "no-such-page?group=science")
    assert page.locator("h1").first.inner_text() == "Heatmaps"
    notice = page.locator(WARNING).first.inner_text()
    assert notice == "The page /no-such-page in the link is not a page of the explorer; showing Heatmaps instead."
    page.close()
