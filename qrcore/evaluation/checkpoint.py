"""A killed evaluation's finished queries, kept beside the store so that a rerun computes only the rest.

On a 1.5B model the edits of all 330 queries of a set take hours; the checkpoint holds each finished query's letter
probabilities under every edit and is removed once the evaluation's numbers are in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import os
from pathlib import Path
from typing import Any
import zipfile

import numpy as np

from qrcore import store

KEY = "__key__"
"""The entry holding what the checkpoint was computed for; the other entries are query ids."""


@dataclass(frozen=True)
class EvaluationCheckpoint:
    """The file `.<store name>.evaluating-<run id>.npz` beside the store, valid for one `key` only."""

    path: Path
    key: str
    """A digest of everything the stored probabilities depend on besides the run (seed, queries, controls, edits)."""

    @classmethod
    def of(cls, db: str | os.PathLike | None, run_id: str, *parts: object) -> EvaluationCheckpoint:
        """The checkpoint of evaluating `run_id` in the store at `db` (default `store.default_db()`) under `parts`."""
        db_path = Path(db if db is not None else store.default_db())
        key = hashlib.sha256(repr((run_id, *parts)).encode()).hexdigest()
        return cls(db_path.with_name(f".{db_path.name}.evaluating-{run_id}.npz"), key)

    def load(self) -> dict[str, np.ndarray]:
        """The finished queries' arrays by query id; none when the file is missing, damaged or for another key."""
        try:
            with np.load(self.path) as saved:
                if str(saved[KEY]) != self.key:
                    return {}
                return {name: saved[name] for name in saved.files if name != KEY}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return {}

    def save(self, done: dict[str, np.ndarray]) -> None:
        """Replace the file with `done`, whole: a kill while saving leaves the previous checkpoint."""
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        with open(tmp, "wb") as out:
            arrays: dict[str, Any] = {KEY: np.array(self.key), **done}  # Any: no array is taken for a savez option
            np.savez(out, **arrays)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Delete the checkpoint (the evaluation is stored)."""
        self.path.unlink(missing_ok=True)
