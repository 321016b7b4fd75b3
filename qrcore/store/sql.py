"""Transactions and DataFrame-bound statements, shared by every writer of the store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pandas as pd

from qrcore.errors import QRNError

FRAME = "_frame"
"""Name under which a DataFrame is registered for one bulk INSERT."""
_OPEN: set[int] = set()
"""id() of the connections inside a `transaction`."""


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back if anything inside raises; inside another `transaction` of `con` it is part of
    that one, so that writers compose into one all-or-nothing write (a refusal midway leaves no row)."""
    if id(con) in _OPEN:
        yield
        return
    con.begin()
    _OPEN.add(id(con))
    try:
        yield
    except BaseException as err:
        _OPEN.discard(id(con))
        con.rollback()
        if isinstance(err, duckdb.IOException):
            raise _unwritten(err) from None
        raise
    _OPEN.discard(id(con))
    try:
        con.commit()
    except (duckdb.IOException, duckdb.TransactionException) as err:
        raise _unwritten(err) from None


def _unwritten(err: duckdb.Error) -> QRNError:
    """The one-line error of a write the disk refused (full, a quota, a size limit); the transaction left nothing."""
    return QRNError(
        f"the store could not be written ({str(err).splitlines()[0]}); nothing was stored: free some space and run "
        "it again, or pass another --db"
    )


def execute_with(con: duckdb.DuckDBPyConnection, sql: str, frame: pd.DataFrame, *params: object) -> None:
    """Run `sql` (which reads FRAME) with `frame` registered as FRAME and `params` bound to its `?`."""
    con.register(FRAME, frame)
    try:
        con.execute(sql, list(params))
    finally:
        try:
            con.unregister(FRAME)
        except duckdb.TransactionException:
            pass  # the statement failed inside a transaction: its own error is the one raised


def one_row(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...]:
    """The row of a statement that always returns one (an aggregate, a pragma, or a key the caller found)."""
    row = con.execute(sql, list(params)).fetchone()
    if row is None:
        raise LookupError(f"no row from {sql.split(chr(10))[0]!r}")
    return row
