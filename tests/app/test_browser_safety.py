"""User text in a real browser (issue 13): on a store whose names, questions and options hold Markdown image and link
syntax, HTML tags and bare addresses, no page makes an image or a link from them, and the browser fetches nothing
the text names. Uses test_browser's server and chromium."""

from __future__ import annotations

from collections.abc import Iterator
import os
from urllib.parse import urlencode

import pytest

from browser_driver import PAGES, open_page
from seeded_store import HOSTILE, QUERIES, URL, hostile, seed_store

pytestmark = pytest.mark.slow

LINKS = """() => [...document.querySelectorAll('a, img, image')].map(e =>
    e.getAttribute('href') || e.getAttribute('xlink:href') || e.getAttribute('src') || '')"""
"""Where every link and image of the page points (HTML and SVG alike)."""


@pytest.fixture(scope="module", autouse=True)
def hostile_server_store(tmp_path_factory, tiny) -> Iterator[None]:
    """Point test_browser's server at a hostile store (it reads QRN_SCREENSHOT_DB), before the server starts."""
    path = tmp_path_factory.mktemp("hostile-browser") / "qrn.duckdb"
    seed_store(path, tiny("llama"), [hostile(q) for q in QUERIES], run=f"run {HOSTILE}", dataset=f"set {HOSTILE}")
    saved = {k: os.environ.get(k) for k in ("QRN_SCREENSHOT_DB", "QRN_SHIPPED")}
    os.environ.update(QRN_SCREENSHOT_DB=str(path), QRN_SHIPPED="0")
    yield
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


SAFETY_PATHS = {
    "heatmaps": f"{PAGES['heatmaps']}?mode=side+by+side",
    "search": f"search?{urlencode({'q': HOSTILE, 'by': 'question'})}",
}
"""Pages opened where they show user text: both groups' heatmaps; a question search for the hostile text, which the
search page quotes (it shows the run's name nowhere else)."""


@pytest.mark.parametrize("name", PAGES)
def test_no_image_or_link_is_made_from_user_text(browser, server, name):
    page = browser.new_page()
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    open_page(page, server, SAFETY_PATHS.get(name, PAGES[name]))
    targets = page.evaluate(LINKS)
    assert not [t for t in targets if "127.0.0.1:9" in t or "example.com" in t or t.startswith("mailto:")], targets
    assert not [url for url in fetched if url.startswith(URL)], fetched
    if name != "data":  # user text shows somewhere as written (not made a link or an image)
        assert "![x](http://127.0.0.1:9/x.png)" in page.inner_text("body").replace("\u2060", "")
    page.close()
