"""Transactions and DataFrame-bound statements, shared by every writer of the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pandas as pd

FRAME = "_frame"
"""Name under which a DataFrame is registered for one bulk INSERT."""


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back if anything inside raises."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


def execute_with(con: duckdb.DuckDBPyConnection, sql: str, frame: pd.DataFrame, *params: object) -> None:
    """Run `sql` (which reads FRAME) with `frame` registered as FRAME and `params` bound to its `?`."""
    con.register(FRAME, frame)
    try:
        con.execute(sql, list(params))
    finally:
        con.unregister(FRAME)
