"""The explorer in a real browser: `streamlit run` on a free port and Debian's chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from repo import REPO

APP = REPO / "explorer" / "app.py"
CHROMIUM = Path("/usr/bin/chromium")
PAGES = {
    "heatmaps": "",
    "overlap": "overlap",
    "common": "common",
    "lab": "lab",
    "methods": "methods",
    "compare": "compare",
    "contrast": "contrast",
    "data": "data",
    "search": "search?q=+Paris&by=token",
}
"""Screenshot name -> URL path (the default page is served at /)."""
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
METRIC = "[data-testid=stMetricValue]"


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://localhost:{port}"
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
