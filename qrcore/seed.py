"""The default run shipped with the package, so a newcomer sees heatmaps before running anything.

`qrn export --run NAME ... --out qrcore/data/default_runs` remakes it from a store; `ensure_default_store`
loads it into the store on the explorer's first start (a no-op once its runs are there).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from qrcore import store

SHIPPED = Path(str(files("qrcore") / "data" / "default_runs"))


def ensure_default_store(db: str | None = None) -> bool:
    """Load the shipped default runs into the store if they are missing; True if anything was loaded."""
    if not (SHIPPED / "runs.parquet").is_file():
        return False
    with store.connect(db) as con:
        return store.import_runs(con, SHIPPED)
