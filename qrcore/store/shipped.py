"""The default run shipped with the package, so a newcomer sees heatmaps before running anything.

`qrn export --run NAME ... --out qrcore/data/default_runs` remakes it from a store; `load_shipped_runs`
loads it into the store on the explorer's first start (a no-op once its runs are there) and on a command line's
first use of a shipped run's name (`load_named`), and `pending` says whether a start is a first start.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
import os
from pathlib import Path

import pandas as pd

from qrcore import store
from qrcore.progress import Progress

SHIPPED = Path(str(files("qrcore.data") / "default_runs"))
SHIPPED_ENV = "QRN_SHIPPED"
"""Set to 0 to never load the shipped runs unasked (tests, benchmarks)."""


def wanted() -> bool:
    """Whether the shipped runs may be loaded unasked: $QRN_SHIPPED is not 0."""
    return os.environ.get(SHIPPED_ENV, "1") != "0"


def names() -> set[str]:
    """The shipped runs' names (none where the package ships none)."""
    runs = SHIPPED / "runs.parquet"
    return set(pd.read_parquet(runs, columns=["name"])["name"]) if runs.is_file() else set()


def pending(db: str | None = None) -> bool:
    """Whether some shipped run is not in the store yet (a missing store counts as empty)."""
    if not (SHIPPED / "runs.parquet").is_file():
        return False
    if not Path(db or store.default_db()).exists():
        return True
    with store.connect(db, read_only=True) as con:
        return not store.has_runs(con, SHIPPED)


def load_shipped_runs(db: str | None = None, progress: Progress | None = None) -> bool:
    """Load the shipped default runs into the store if they are missing; True if anything was loaded.

    `progress(done, total, table)` as in `store.import_runs`.
    """
    if not (SHIPPED / "runs.parquet").is_file():
        return False
    with store.connect(db) as con:
        return store.import_runs(con, SHIPPED, progress)


def load_named(runs: Iterable[str], db: str | None = None, progress: Progress | None = None) -> bool:
    """Load the shipped runs into the default store when `runs` name one of them and the store lacks it (a command's
    first use of `domain-qwen2` on a new machine); True if anything was loaded."""
    if not wanted() or not names() & set(runs) or not pending(db):
        return False
    return load_shipped_runs(db, progress)
