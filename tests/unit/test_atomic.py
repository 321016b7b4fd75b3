"""Files written whole or not at all: a killed writer's temporary folder is removed by the next writer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qrcore.atomic import PREFIX, files_into
from qrcore.errors import QRNError


def dead_pid() -> int:
    """The id of a process that has exited and been waited for."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_files_move_in_whole_and_a_killed_writers_folder_is_removed(tmp_path):
    stale = tmp_path / f"{PREFIX}{dead_pid()}"
    stale.mkdir()
    (stale / "half.csv").write_text("a,")
    running = tmp_path / f"{PREFIX}{os.getppid()}"  # a live writer's folder is left alone
    running.mkdir()
    with files_into(tmp_path) as tmp:
        (tmp / "table.csv").write_text("a,b\n")
    assert (tmp_path / "table.csv").read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "table.csv"])


def test_a_failed_write_moves_nothing_and_says_so_in_one_line(tmp_path):
    (tmp_path / "table.csv").write_text("old")
    with pytest.raises(QRNError, match=r"could not write into .*no file was written") as err:
        with files_into(tmp_path) as tmp:
            (tmp / "table.csv").write_text("new")
            raise OSError(28, "No space left on device")
    assert "\n" not in str(err.value)
    assert (tmp_path / "table.csv").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
