"""The store cases of issue 29, each a probe that stays fixed: an evaluation stored whole, damaged blocks found before
anything is written, refusals decided before the first write, and one line instead of a traceback for a store missing a
table, a full disk and a broken export folder, with every file as it was (bytes, mtimes, no new file)."""

from __future__ import annotations

import os
from pathlib import Path
import re
import resource
import shutil
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest
from test_probe_cli import RUN_ARGS
import test_reliability
from test_reliability import DAMAGED_COMMANDS, fails, snapshot

from qrcore import store
from qrcore.cli import main
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.runs import shards
from qrcore.settings import RunSettings
from qrcore.store import connection
from repo import REPO
from seeded_store import DATASET, QUERIES, RUN, seed_store, synthetic_attribution

seeded, work = test_reliability.seeded, test_reliability.work  # its store fixtures, shared
DAMAGED = r"qrn\.duckdb is damaged: {what}; restore a copy or pass another --db"
CHECKSUM = r"block \d+ \(bytes [\d,]+ to [\d,]+\) fails its checksum"


def table_block(db: Path, table: str) -> tuple[int, int]:
    """(a block of `table`'s stored data, the store's block size)."""
    with duckdb.connect(str(db), read_only=True) as con:
        block = con.execute("SELECT max(block_id) FROM pragma_storage_info(?) WHERE persistent", [table]).fetchone()[0]
        return block, con.execute(connection.BLOCK_SIZE).fetchone()[0]


def scribble(db: Path, block: int, block_size: int) -> None:
    """Random bytes written inside a block, past its checksum, the file's size unchanged (as a bad disk would)."""
    with db.open("r+b") as f:
        f.seek(connection.DUCKDB_HEADERS + block * block_size + 1000)
        f.write(os.urandom(2048))


# --- 1. an evaluation is stored all at once; one evaluation of a store at a time ----------------------------------


def test_second_evaluation_of_a_store_is_refused_naming_the_first(work, capsys):
    with store.writer_lock(work / "qrn.duckdb", "qrn evaluate"):
        before = snapshot(work)
        assert fails(["evaluate", "--run", RUN, "--model", "tiny-llama", "--db", "qrn.duckdb"], capsys) == (
            f"qrn.duckdb is being written by another qrn evaluate (pid {os.getpid()}); wait for it to finish or use "
            "another --db"
        )
        assert snapshot(work) == before
    assert not list(work.glob(".qrn.duckdb.evaluating-*"))  # no checkpoint was begun


def test_evaluation_is_replaced_in_one_transaction(work):
    """A failure midway through storing a run's evaluation leaves the earlier one whole."""
    with store.connect(work / "qrn.duckdb", read_only=True) as con:
        run_id = store.run_info(con, RUN).run_id
        before = store.evaluations(con, run_id)
    rows = before.assign(value=-1.0)
    rows.loc[len(rows) - 1, "metric"] = None  # metric is NOT NULL: the insert fails after the delete
    with store.connect(work / "qrn.duckdb") as con, pytest.raises(duckdb.ConstraintException, match="NOT NULL"):
        store.replace_evaluations(con, run_id, rows)
    with store.connect(work / "qrn.duckdb", read_only=True) as con:
        pd.testing.assert_frame_equal(store.evaluations(con, run_id), before)


# --- 2. damaged blocks are found before anything is written ---------------------------------------------------------


@pytest.mark.parametrize("command", DAMAGED_COMMANDS)
def test_random_bytes_in_a_data_block_are_refused_by_every_command(work, command, capsys):
    (work / "new.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n")
    scribble(work / "qrn.duckdb", *table_block(work / "qrn.duckdb", "attributions"))
    before = snapshot(work)
    message = fails([*DAMAGED_COMMANDS[command], "--db", "qrn.duckdb"], capsys)
    assert re.fullmatch(DAMAGED.format(what=CHECKSUM), message), message
    assert snapshot(work) == before


def test_random_bytes_in_any_block_are_found(work):
    """Every block of the store, tables, catalog and the primary keys' indexes alike (DuckDB reads an index only
    when a write needs it, so reading every table would miss them)."""
    db = work / "qrn.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        block_size = con.execute(connection.BLOCK_SIZE).fetchone()[0]
    blocks = (db.stat().st_size - connection.DUCKDB_HEADERS) // block_size
    assert blocks > 10
    for block in range(blocks):
        copy = work / f"b{block}.duckdb"
        shutil.copy(db, copy)
        scribble(copy, block, block_size)
        with pytest.raises(QRNError, match="is damaged: ") as err:
            store.connect(copy, read_only=True).close()
        message = str(err.value)  # our checksum pass names the block; DuckDB's own read of the catalog comes first
        assert re.search(rf"block {block} \(", message) or "checksum" in message, message


def test_resuming_an_unfinished_run_on_a_damaged_store_is_refused(work, capsys):
    scribble(work / "qrn.duckdb", *table_block(work / "qrn.duckdb", "query_results"))
    before = snapshot(work)
    message = fails(
        ["run", "--dataset", "half-set", "--name", "half", "--model", "tiny-llama", "--db", "qrn.duckdb"], capsys
    )
    assert re.fullmatch(DAMAGED.format(what=CHECKSUM), message), message
    assert snapshot(work) == before


# --- 3. every refusal is decided before the first write -------------------------------------------------------------


def test_run_with_a_taken_name_and_another_model_writes_no_row(work, capsys):
    before = snapshot(work)
    message = fails([*RUN_ARGS[:-1], "tiny-gpt2", "--name", RUN, "--db", "qrn.duckdb"], capsys)
    assert re.match(rf"run (name )?{RUN!r} (already exists|is taken)", message), message
    assert snapshot(work) == before  # no model, dataset or run row


def test_run_on_a_changed_dataset_file_writes_no_row(work, capsys):
    (work / "mine.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\nWhat is 3+3?,5,6,7,8,B\n")
    assert main(["import", "mine.csv", "--db", "qrn.duckdb"]) == 0
    (work / "qrn.duckdb.lock").unlink()  # a lock file left in place is rewritten by every writer that takes it
    (work / "mine.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n")
    capsys.readouterr()
    before = snapshot(work)
    assert fails(["run", "--dataset", "mine.csv", "--model", "tiny-gpt2", "--db", "qrn.duckdb"], capsys) == (
        "dataset 'mine' is already stored with other queries (2 stored, 1 given); import the new queries under "
        "another name, e.g. 'mine-2'"
    )
    assert snapshot(work) == before  # no model row


def test_question_over_the_context_creates_no_run(work, capsys):
    (work / "long.csv").write_text(f"question,A,B,C,D,answer\n{'word ' * 3000}?,a,b,c,d,A\nShort?,a,b,c,d,A\n")
    before = snapshot(work)
    for _ in range(2):  # every rerun the same, and still no run
        assert re.fullmatch(
            r"the prompt is \d+ tokens, over the model's context of 512; shorten the question or options\.",
            fails(["run", "--dataset", "long.csv", "--model", "tiny-llama", "--db", "qrn.duckdb"], capsys),
        )
        assert snapshot(work) == before


def shard_folder(folder: Path, lm, name: str, queries: list[Query], shard_lm=None) -> None:
    """A data-parallel run folder of `lm` on `queries` named `name`, with a shard of its first query made by
    `shard_lm` (none when it is None)."""
    settings = RunSettings()
    manifest = shards.make_manifest(lm, name, "probe-set", "test", queries, settings)
    shards.write_manifest(folder, manifest)
    if shard_lm is not None:
        key = {**shards.key_of({**manifest, "dataset": "d"}), "model": shard_lm.fingerprint}
        shape = (shard_lm.store_row()["n_layers"], shard_lm.store_row()["n_neurons"])
        attr = synthetic_attribution(queries[0], shape, np.random.default_rng(0))
        shards.write_shard(folder, 0, key, attr, settings.qrnca)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no finished shard", "run holds no finished query yet; nothing to merge"),
        (
            "another model's shard",
            r"shard rank-0/sci-1\.parquet was made with model \(.+\); merge only shards of one run",
        ),
        ("a taken name", rf"run (name )?{RUN!r} (already exists|is taken).*"),
    ],
)
def test_refused_merge_writes_no_row(case, message, work, tiny, capsys):
    lm = tiny("llama")
    if case == "no finished shard":
        shard_folder(work / "run", lm, "probe", QUERIES)
    elif case == "another model's shard":
        shard_folder(work / "run", lm, "probe", QUERIES, tiny("gpt2"))
    else:
        shard_folder(work / "run", lm, RUN, QUERIES[:2], lm)
    before = snapshot(work)
    got = fails(["merge", "run", "--db", "qrn.duckdb"], capsys)
    assert re.fullmatch(message, got), got
    assert snapshot(work) == before


def test_import_next_to_a_renamed_copy_of_its_dataset_loads_cleanly(work, tiny, tmp_path_factory, capsys):
    other = tmp_path_factory.mktemp("other") / "qrn.duckdb"
    seed_store(other, tiny("llama"), QUERIES[:4])  # the same dataset and run names, other queries
    assert main(["export", "--run", RUN, "--db", str(other), "--out", "out"]) == 0
    dataset_id = pd.read_parquet(work / "out" / "datasets.parquet")["dataset_id"][0]
    (work / f"{DATASET}-{dataset_id[:8]}.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n")
    assert main(["import", f"{DATASET}-{dataset_id[:8]}.csv", "--db", "qrn.duckdb"]) == 0  # takes the renamed name
    capsys.readouterr()
    assert main(["import", "out", "--db", "qrn.duckdb"]) == 0
    run_id = pd.read_parquet(work / "out" / "runs.parquet")["run_id"][0]
    assert capsys.readouterr().out == f"loaded out: the store now holds its runs {RUN}-{run_id[:8]}\n"
    with store.connect(work / "qrn.duckdb", read_only=True) as con:
        names = dict(con.execute("SELECT dataset_id, name FROM datasets").fetchall())
    assert names[dataset_id] == f"{DATASET}-{dataset_id}"


# --- 4. one line instead of a traceback ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", DAMAGED_COMMANDS)
def test_store_missing_a_table_is_damaged(work, command, capsys):
    (work / "new.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n")
    with duckdb.connect(str(work / "qrn.duckdb")) as con:
        con.execute("DROP TABLE heatmaps")
    before = snapshot(work)
    message = fails([*DAMAGED_COMMANDS[command], "--db", "qrn.duckdb"], capsys)
    assert re.fullmatch(DAMAGED.format(what="its table heatmaps is missing"), message), message
    assert snapshot(work) == before


def limited_cli(argv: list[str], cwd: Path, size: int) -> subprocess.CompletedProcess:
    """`qrn ARGV` in a process of its own that can write no file beyond `size` bytes (as a full disk would stop it;
    Python ignores the SIGXFSZ, so the write fails with EFBIG)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "qrcore.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size)),
    )


@pytest.mark.parametrize(
    ("argv", "size", "message"),
    [
        (
            ["export", "--run", RUN, "--out", "out"],
            8000,
            r"could not write into out \(.*File too large\); no file was written: free some space and run it again, "
            "or pass another --out",
        ),
        (
            ["report", "--run", RUN, "--out", "out"],
            1000,
            rf"could not write into out/{RUN} \(.*File too large\); no file was written: free some space and run "
            "it again, or pass another --out",
        ),
    ],
)
def test_full_disk_while_writing_files_leaves_none(argv, size, message, work):
    before = snapshot(work)
    done = limited_cli([*argv, "--db", "qrn.duckdb"], work, size)
    assert done.returncode == 2 and re.fullmatch(f"qrn: error: {message}\n", done.stderr), done.stderr
    assert snapshot(work) == before  # no partial or empty file (the folder it made stays, empty)


def test_full_disk_while_importing_is_one_line(work):
    rows = "".join(f"Question {i} {'x' * 100}?,a{i},b,c,d,A\n" for i in range(6000))
    (work / "big.csv").write_text(f"question,A,B,C,D,answer\n{rows}")
    before = snapshot(work)
    done = limited_cli(["import", "big.csv", "--db", "qrn.duckdb"], work, 60_000)
    assert done.returncode == 2 and re.fullmatch(
        r"qrn: error: the store could not be written \(.*Could not write file .*qrn\.duckdb\.wal.*File too large\); "
        r"nothing was stored: free some space and run it again, or pass another --db\n",
        done.stderr,
    ), done.stderr
    after = snapshot(work)
    assert after.pop("qrn.duckdb.wal", (b"",))[0] == b""  # DuckDB's own log, left empty
    assert after == before
    with store.connect(work / "qrn.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM datasets WHERE name = 'big'").fetchone()[0] == 0


@pytest.mark.parametrize("damage", ["garbage", "empty", "cut short"])
def test_broken_parquet_file_in_an_export_is_one_line_and_makes_no_store(damage, work, capsys):
    assert main(["export", "--run", RUN, "--out", "out", "--db", "qrn.duckdb"]) == 0
    capsys.readouterr()
    path = work / "out" / "attributions.parquet"
    data = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(len(data)), "empty": b"", "cut short": data[: len(data) // 2]}[damage])
    before = snapshot(work)
    message = fails(["import", "out", "--db", "new.duckdb"], capsys)
    assert re.fullmatch(
        r"out/attributions\.parquet is not a readable Parquet file \(.+\); export the runs again \(qrn export\)",
        message,
    ), message
    assert snapshot(work) == before  # no new.duckdb
