"""The default run shipped with the package, so a newcomer sees heatmaps before running anything.

`qrn export --run NAME ... --out qrcore/data/default_runs` remakes it from a store; `load_shipped_runs`
loads it into the store on the explorer's first start (a no-op once its runs are there), and `pending` says
whether a start is a first start.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from qrcore import store
from qrcore.progress import Progress

SHIPPED = Path(str(files("qrcore.data") / "default_runs"))


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
