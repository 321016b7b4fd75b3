"""Opening the store: created or upgraded on first use, foreign, newer or damaged files refused untouched.

Concurrency (measured with duckdb 2.0.0, two processes, see tests/unit/store/test_store.py):
- A process with a read-write connection open holds an exclusive file lock: another process can open the
  file neither read-write nor read-only ("IO Error: Could not set lock on file ... Conflicting lock is held
  in ... (PID n)").
- Read-only connections share the file with each other but block a read-write open in another process.
- Opening and closing a read-write connection without writing leaves the file's bytes and mtime unchanged;
  opening a file that is not DuckDB fails without touching it.
So nobody may keep the file open: `qrn run` connects for each short transaction (`write_query` per query,
`finalize_run` once) and closes, the explorer connects read-only per page render and closes, and `connect`
retries for up to `wait` seconds while another process holds the file. Two writers are kept apart for a
whole run by `writer_lock`, an flock on "<db>.lock" (left in place after the run; a lock file that nobody
holds is free).

Damage (measured the same way): a DuckDB file cut short can still open and even take writes, failing only when
a lost block is read, and a healthy file may end before the block count in its header (DuckDB cuts free blocks off
its end). So `connect` reads every table's storage metadata and the catalog's before anything is written, and
compares the file's size with the last block they use, and verifies every block's checksum as DuckDB would on reading
it (`qrcore.store.checksums`), once per version of the file and process; a damaged file
is refused for reading and writing alike and never written (a refused read-write connection is closed without
DuckDB's checkpoint). New stores and migrations: `qrcore.store.schema`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import fcntl
import os
from pathlib import Path
import re
import time

import duckdb

from qrcore.errors import QRNError
from qrcore.store.checksums import HEADERS as DUCKDB_HEADERS
from qrcore.store.checksums import failing_block
import qrcore.store.schema as schema  # schema.SCHEMA_VERSION looked up at each call: tests raise it
from qrcore.store.schema import APP, SELECT_META, create, migrate, remove_stale_temps
from qrcore.store.sql import one_row

DEFAULT_DB = "cache/qrn.duckdb"
DB_ENV = "QRN_DB"
LOCK_WAIT_S = 15.0
"""How long `connect` retries while another process has the file open (a run's finalize takes a few seconds)."""
DUCKDB_MAGIC = b"DUCK"
"""Bytes 8-11 of every DuckDB file."""
_SOUND: set[tuple[int, int, int, int]] = set()
"""(device, inode, size, mtime) of the store files `_check_blocks` passed in this process: not read again."""
LIST_TABLES = (
    "SELECT table_name FROM information_schema.tables "
    "WHERE table_catalog = current_database() AND table_schema = 'main'"
)
BASE_TABLES = "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main'"
LAST_TABLE_BLOCK = """SELECT coalesce(max(greatest(block_id, coalesce(list_max(additional_block_ids), -1))), -1)
    FROM pragma_storage_info(?) WHERE persistent"""
"""The last file block a table's stored segments use (reads the table's storage metadata)."""
LAST_CATALOG_BLOCK = "SELECT coalesce(max(block_id), -1) FROM pragma_metadata_info()"
BLOCK_SIZE = "SELECT block_size FROM pragma_database_size() WHERE database_name = current_database()"
NO_CHECKPOINT_ON_CLOSE = "PRAGMA disable_checkpoint_on_shutdown"


def default_db() -> str:
    """The store path: $QRN_DB if set, else DEFAULT_DB."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


def connect(
    path: str | os.PathLike | None = None, read_only: bool = False, *, wait: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """Open the store at `path` (default `default_db()`), creating or upgrading it; refuse foreign, newer or damaged
    files untouched.

    Close the connection soon (use it in a `with` block): an open connection locks the file for other processes.
    """
    path = Path(path if path is not None else default_db())
    check_path(path, read_only)
    if not path.exists():
        if read_only:
            raise QRNError(f"{path} does not exist; compute a run first (qrn run) or pass another --db")
        path.parent.mkdir(parents=True, exist_ok=True)
        create(path)
    con = _open(path, read_only, wait)
    try:
        version = _check_tables(con, path)
        if not read_only:
            remove_stale_temps(path)
        if version == schema.SCHEMA_VERSION:
            return con
        if not read_only:
            migrate(con, path, version)
    except BaseException:
        _close_unwritten(con)
        raise
    con.close()
    if read_only:
        connect(path, wait=wait).close()  # upgrade with a short read-write connection
    return connect(path, read_only, wait=wait)


def verify(path: str | os.PathLike | None = None) -> None:
    """Refuse with a QRNError, writing nothing, a store that exists but is foreign, newer or damaged (an older one is
    upgraded)."""
    if Path(path if path is not None else default_db()).exists():
        connect(path, read_only=True).close()


@contextmanager
def writer_lock(path: str | os.PathLike | None = None, command: str = "qrn run") -> Iterator[None]:
    """Hold "<db>.lock" for a whole `command` (a run, an evaluation, an import, a merge) so that a second writer of
    the same store stops with a clear message naming the first.

    A lock file this call made is removed again when the run fails, so a refused command leaves none.
    """
    db = Path(path if path is not None else default_db())
    check_path(db, read_only=False)
    verify(db)  # a refused store gets no lock file beside it
    lock = Path(f"{db}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    made = not lock.exists()
    fd = _locked(lock, db)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}".encode())
        try:
            yield
        except BaseException:
            if made:
                lock.unlink(missing_ok=True)  # still held: whoever opened it meanwhile sees it gone (`_locked`)
            raise
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _locked(lock: Path, db: Path) -> int:
    """A descriptor of `lock`, flocked by this process; QRNError while another process holds it. A lock file that was
    removed between its open and the flock (by a failed run, above) is opened anew."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = os.read(fd, 64).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            raise QRNError(
                f"{db} is being written by another {holder or 'qrn run'} (pid {pid or 'unknown'}); "
                "wait for it to finish or use another --db"
            ) from None
        if lock.exists() and os.stat(lock).st_ino == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def check_path(path: Path, read_only: bool) -> None:
    """One-line QRNError, before DuckDB opens anything, for a store path that is a folder, not a regular file (DuckDB
    would wait forever on a FIFO), unreadable, or, for a writer, a file or folder this process may not write (DuckDB
    writes its log and `writer_lock` its lock file beside the store)."""
    if path.is_dir():
        raise QRNError(f"{path} is a folder, not a store file; pass the path of a store file to --db (or QRN_DB)")
    if path.exists():
        if not path.is_file():
            raise QRNError(
                f"{path} is not a regular file (a pipe, device or socket); pass the path of a store file to --db "
                "(or QRN_DB)"
            )
        try:
            with path.open("rb") as f:
                f.read(len(DUCKDB_MAGIC))
        except OSError as err:
            raise QRNError(f"{path} cannot be read ({err.strerror}); pass another --db (or QRN_DB)") from None
    if read_only:
        return
    folder = next(p for p in path.absolute().parents if p.exists())
    blocked = next((p for p in (path, folder) if p.exists() and not os.access(p, os.W_OK)), None)
    if blocked is not None:
        raise QRNError(
            f"{path} cannot be written: {blocked} is read-only for this user; make it writable or pass another --db"
        )


def _open(path: Path, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retrying while another process holds the file; QRNError for a file DuckDB cannot read."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as err:
            message = str(err)
            if "Could not set lock" not in message:
                raise _unreadable(path, message) from None
            if time.monotonic() >= deadline:
                pid = re.search(r"PID (\d+)", message)
                raise QRNError(
                    f"{path} is in use by another process (pid {pid[1] if pid else 'unknown'}) for more "
                    f"than {wait:g} s; try again when it is done or use another --db"
                ) from None
            time.sleep(0.05)


def _unreadable(path: Path, message: str) -> QRNError:
    """The error for a file DuckDB refused to open: damaged if it is a DuckDB file, else not one or unreadable."""
    if _is_duckdb(path):
        return _damaged(path, f"DuckDB cannot open it ({message.splitlines()[0]})")
    what = (
        "not a DuckDB database"
        if "not a valid DuckDB database" in message
        else f"unreadable by DuckDB {duckdb.__version__}: {message.splitlines()[0]}"
    )
    return QRNError(f"{path} is {what}; pass another --db or move the file away")


def _damaged(path: Path, what: str) -> QRNError:
    """The one-line refusal of a damaged store."""
    return QRNError(f"{path} is damaged: {what}; restore a copy or pass another --db")


def _is_duckdb(path: Path) -> bool:
    """Whether the file starts like a DuckDB database."""
    with path.open("rb") as f:
        return f.read(12)[8:] == DUCKDB_MAGIC


def _check_tables(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The store's schema version (0 for an empty file) after `_check_blocks`; QRNError for a foreign, damaged or
    newer file."""
    tables = [row[0] for row in con.execute(LIST_TABLES).fetchall()]
    if "meta" not in tables:
        if tables:
            raise QRNError(
                f"{path} is not a QR Neuron Explorer store (no meta table); pass another --db or move the file away"
            )
        return 0
    try:
        meta = dict(con.execute(SELECT_META).fetchall())
    except (duckdb.BinderException, duckdb.CatalogException):
        meta = {}
    except duckdb.Error as err:  # a damaged block of the meta table
        raise _damaged(path, f"its tables cannot be read ({str(err).splitlines()[0]})") from None
    if meta.get("app") != APP:
        raise QRNError(
            f"{path} is not a QR Neuron Explorer store (its meta table is not ours); "
            "pass another --db or move the file away"
        )
    _check_blocks(con, path)
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise _damaged(path, f"its schema_version is {version!r}")
    if int(version) > schema.SCHEMA_VERSION:
        raise QRNError(
            f"{path} has store schema {version}, newer than this qrn's {schema.SCHEMA_VERSION}; "
            "upgrade qrn or pass another --db"
        )
    missing = sorted(schema.tables(int(version)) - set(tables))
    if missing:
        raise _damaged(path, f"its table {missing[0]} is missing")
    return int(version)


def _check_blocks(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Read every table's storage metadata and verify every block's checksum (`checksums`); QRNError if that fails,
    uses a block beyond the end of the file, or a block's checksum does not match."""
    st = path.stat()
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if version in _SOUND:
        return
    try:
        last = one_row(con, LAST_CATALOG_BLOCK)[0]
        for (table,) in con.execute(BASE_TABLES).fetchall():
            last = max(last, one_row(con, LAST_TABLE_BLOCK, [table])[0])
        block_size = one_row(con, BLOCK_SIZE)[0]
    except duckdb.Error as err:
        raise _damaged(path, f"its tables cannot be read ({str(err).splitlines()[0]})") from None
    needed = DUCKDB_HEADERS + (last + 1) * block_size
    if st.st_size < needed:
        raise _damaged(path, f"the file is {st.st_size:,} bytes but its tables use blocks up to byte {needed:,}")
    bad = failing_block(path, block_size)
    if bad is not None:
        start = DUCKDB_HEADERS + bad * block_size
        raise _damaged(path, f"block {bad} (bytes {start:,} to {start + block_size:,}) fails its checksum")
    _SOUND.add(version)


def _close_unwritten(con: duckdb.DuckDBPyConnection) -> None:
    """Close a connection to a refused file without DuckDB's checkpoint, which would write a pending log into it."""
    try:
        con.execute(NO_CHECKPOINT_ON_CLOSE)
    except duckdb.Error:
        pass  # a read-only connection never checkpoints
    con.close()
