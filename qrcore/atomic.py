"""A command's files written whole or not at all (`qrn export`, `qrn report`): a full disk leaves no partial file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import os
from pathlib import Path
import shutil

from qrcore.errors import QRNError

PREFIX = ".writing-"
"""A writer's temporary folder is PREFIX + its process id."""


def _alive(pid: int) -> bool:
    """Whether a process of that id runs (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: Path) -> None:
    """Remove the temporary folders of writers that were killed (a SIGKILL skips their `finally`); a folder of this
    process's id is a dead writer's whose id was reused."""
    for tmp in folder.glob(f"{PREFIX}*"):
        pid = tmp.name.removeprefix(PREFIX)
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def files_into(folder: Path) -> Iterator[Path]:
    """A temporary folder inside `folder` to write into; when the block ends, each of its files replaces the file of
    its name in `folder`. On an OSError (a full disk, a quota) nothing is moved, the temporary folder is removed and a
    one-line QRNError says what failed."""
    tmp = folder / f"{PREFIX}{os.getpid()}"
    try:
        remove_stale(folder)
        tmp.mkdir()
        yield tmp
        for path in sorted(tmp.iterdir()):
            os.replace(path, folder / path.name)
    except OSError as err:
        raise QRNError(
            f"could not write into {folder} ({err.strerror or err}); no file was written: free some space and run "
            "it again, or pass another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
