"""The project as a user installs it: built into a folder outside the source tree (pip's non-editable install), whose
`qrn explore` serves the installed explorer with its packaged settings."""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

from browser_driver import REPO, free_port, wait_healthy

pytestmark = pytest.mark.slow


def test_installed_package_serves_the_explorer(tmp_path: Path):
    source, site = tmp_path / "source", tmp_path / "site"  # a copy: the build writes into the tree it builds
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "cache", "build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    assert (site / "explorer" / "app.py").exists() and (site / "explorer" / "config.toml").exists()
    assert (site / "qrcore" / "data" / "default_runs" / "runs.parquet").exists()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "QRN_DB": str(tmp_path / "qrn.duckdb"),
        "QRN_CACHE": str(REPO / "cache"),
        "QRN_MODEL": "tiny-llama",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import explorer, qrcore; print(explorer.__file__, qrcore.__file__)"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.count(str(site)) == 2, where  # the installed copies, not the source tree
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qrcore.cli", "explore", "--model", "tiny-llama", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://localhost:{port}", proc)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
