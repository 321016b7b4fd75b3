"""The command-line cases of issue 29, each a probe that stays fixed: names that cannot escape, report.md that shows
user text as written, and one line with exit code 2 instead of a traceback, a hang or a misleading word, with every
file as it was (bytes, mtimes, no new file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

import duckdb
from markdown_it import MarkdownIt
import pandas as pd
import pytest
import test_reliability
from test_reliability import QUESTION, fails, snapshot

from qrcore.cli import main
from qrcore.editing import edits
from qrcore.errors import QRNError
from qrcore.model import load, memory
from qrcore.names import RULE
from qrcore.runs import shards
from qrcore.settings import PromptSettings, RunSettings
from repo import REPO
from seeded_store import HOSTILE, QUERIES, RUN, hostile, seed_store

seeded, work = test_reliability.seeded, test_reliability.work  # its store fixtures, shared
RUN_ARGS = ["run", "--dataset", "domain", "--groups", "biology", "--per-group", "1", "--model", "tiny-llama"]
NEW_CSV = "question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n"


def not_allowed(what: str, shown: str, fix: str = "choose another name") -> str:
    """The refusal of a name that breaks the rule."""
    return f"{what} {shown} is not allowed: {RULE}; {fix}"


def cli(argv: list[str], cwd: Path, user: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`qrn ARGV` in a process of its own (as `user` when given, which needs root), killed after `timeout` seconds."""
    ids = pwd.getpwnam(user) if user else None
    prefix = ["setpriv", f"--reuid={ids.pw_uid}", f"--regid={ids.pw_gid}", "--clear-groups"] if ids else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [*prefix, sys.executable, "-m", "qrcore.cli", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --- 1. names are checked where they enter, before anything is written ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("..", "'..'"),
        ("", "''"),
        ("\u200b", "'\\u200b'"),
        ("two\nlines", "'two\\nlines'"),
        ("/tmp/abs", "'/tmp/abs'"),
        ("../up", "'../up'"),
        ("x" * 300, f"'{'x' * 40}...' (300 characters)"),
    ],
)
def test_run_name_is_refused_before_anything(name, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fails([*RUN_ARGS, "--name", name, "--db", "new.duckdb"], capsys) == not_allowed("run name", shown)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["new.csv", "--name", ".hidden"], "'.hidden'"),
        (["new.csv", "--name", " "], "' '"),
        (["my data.csv"], "'my data'"),
    ],
)
def test_dataset_name_is_refused_at_import(argv, shown, work, capsys):
    (work / "new.csv").write_text(NEW_CSV)
    (work / "my data.csv").write_text(NEW_CSV)
    before = snapshot(work)
    assert fails(["import", *argv, "--db", "qrn.duckdb"], capsys) == not_allowed(
        "dataset name",
        shown,
        "give another with qrn import FILE --name NAME (a file's default name is its name without the extension)",
    )
    assert snapshot(work) == before


def test_imported_export_whose_run_name_breaks_the_rule_is_refused(work, capsys):
    assert main(["export", "--run", RUN, "--out", "out", "--db", "qrn.duckdb"]) == 0
    runs = pd.read_parquet(work / "out" / "runs.parquet")
    runs.assign(name="..").to_parquet(work / "out" / "runs.parquet", index=False)
    capsys.readouterr()
    before = snapshot(work)
    assert fails(["import", "out", "--db", "qrn.duckdb"], capsys) == not_allowed(
        "out: run name", "'..'", "this qrn loads only exports whose names follow it"
    )
    assert snapshot(work) == before


@pytest.mark.parametrize("stored", ["..", "/tmp/abs", "y" * 300])
def test_report_of_a_stored_name_that_breaks_the_rule_stays_inside_out(stored, work, capsys):
    with duckdb.connect(str(work / "qrn.duckdb")) as con:  # as a qrn before the rule stored it
        con.execute("UPDATE runs SET name = ? WHERE name = ?", [stored, RUN])
    assert main(["report", "--run", stored, "--db", "qrn.duckdb", "--out", "out/sub"]) == 0
    written = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert written and all(p.resolve().is_relative_to((work / "out" / "sub").resolve()) for p in written)
    assert [p.name for p in (work / "out").iterdir()] == ["sub"]
    assert len(written[0].parent.name) <= 100


def test_report_md_shows_user_text_as_written(tmp_path, tiny):
    db = tmp_path / "qrn.duckdb"
    seed_store(db, tiny("llama"), [hostile(q) for q in QUERIES])
    with duckdb.connect(str(db)) as con:  # names as a qrn before the rule stored them
        con.execute("UPDATE runs SET name = ?", [f"{RUN} {HOSTILE} | x"])
        con.execute("UPDATE datasets SET name = ?", [f"set {HOSTILE}"])
    assert main(["report", "--run", f"{RUN} {HOSTILE} | x", "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    text = next((tmp_path / "out").iterdir()).joinpath("report.md").read_text()
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert "<a " not in html and "<img" not in html, html  # the tags' text is shown, escaped
    assert re.search(r"<td>science !\[x\]\(http\u2060://", html), html  # the group name, as written, in its cell
    assert f"<h1>Run {RUN} ![x](http\u2060://" in html  # the run name, its '|' kept in the title


# --- 2. --db that is not a store file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "{p} is a folder, not a store file; pass the path of a store file to --db (or QRN_DB)"),
        (
            lambda p: p.symlink_to("/proc/self/mem"),
            "{p} cannot be read (Input/output error); pass another --db (or QRN_DB)",
        ),
    ],
    ids=["folder", "proc-self-mem"],
)
@pytest.mark.parametrize("how", ["--db", "QRN_DB"])
def test_db_that_is_not_a_file_is_one_line(make, message, how, work, tmp_path_factory, monkeypatch, capsys):
    odd = tmp_path_factory.mktemp("odd") / "odd.duckdb"  # outside `work`: snapshot cannot read /proc/self/mem
    make(odd)
    (work / "new.csv").write_text(NEW_CSV)
    before = snapshot(work)
    if how == "QRN_DB":
        monkeypatch.setenv("QRN_DB", str(odd))
    argv = ["import", "new.csv", *(["--db", str(odd)] if how == "--db" else [])]
    assert fails(argv, capsys) == message.format(p=odd)
    assert fails(["report", "--run", RUN, *argv[2:]], capsys) == message.format(p=odd)
    assert snapshot(work) == before and [p.name for p in odd.parent.iterdir()] == ["odd.duckdb"]


def test_db_that_is_a_fifo_is_one_line_and_does_not_hang(work):
    os.mkfifo(work / "pipe.duckdb")
    before = snapshot(work)
    done = cli(["report", "--run", RUN, "--db", "pipe.duckdb"], work, timeout=60)
    assert (done.returncode, done.stderr) == (
        2,
        "qrn: error: pipe.duckdb is not a regular file (a pipe, device or socket); pass the path of a store file to "
        "--db (or QRN_DB)\n",
    )
    assert snapshot(work) == before


@pytest.fixture
def readonly(seeded: Path):
    """A folder this test's qrn process may read but not write, holding a copy of the seeded store and new.csv: as the
    user nobody when the tests run as root (whom no permission stops), else with the write bits cleared."""
    folder = Path(tempfile.mkdtemp(prefix="qrn-readonly-"))
    shutil.copy(seeded, folder / "qrn.duckdb")
    (folder / "new.csv").write_text(NEW_CSV)
    root = os.geteuid() == 0
    for path in (folder, folder / "qrn.duckdb", folder / "new.csv"):
        path.chmod(0o755 if path.is_dir() else 0o644) if root else path.chmod(0o555 if path.is_dir() else 0o444)
    yield folder, "nobody" if root else None
    folder.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize(
    ("db", "blocked"), [("qrn.duckdb", "qrn.duckdb"), ("new.duckdb", "{folder}")], ids=["store", "folder"]
)
def test_read_only_store_or_folder_is_one_line_not_damaged(db, blocked, readonly):
    folder, user = readonly
    before = snapshot(folder)
    done = cli(["import", "new.csv", "--db", db], folder, user)
    assert (done.returncode, done.stderr) == (
        2,
        f"qrn: error: {db} cannot be written: {blocked.format(folder=folder)} is read-only for this user; make it "
        "writable or pass another --db\n",
    )
    assert snapshot(folder) == before


# --- 3. models, shards, ports and sizes -------------------------------------------------------------------------


def test_cut_short_converted_model_says_to_delete_its_folder(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QRN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    folder = tmp_path / "cache" / "models" / load._slug(gguf)
    lm = tiny("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    (folder / load.COMPLETE_MARKER).write_text("{}")
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    capsys.readouterr()  # save_pretrained's progress bar
    before = snapshot(tmp_path)
    message = fails(["attribute", *QUESTION, "--model", "m.gguf"], capsys)
    assert re.fullmatch(
        re.escape(f"the converted model in {folder} cannot be loaded (")
        + r"[^\n]+"
        + re.escape(
            "): it is cut short or damaged; delete that folder and run the command again, which converts the "
            "model anew."
        ),
        message,
    ), message
    assert snapshot(tmp_path) == before


def test_model_that_is_a_device_is_not_called_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fails(["attribute", *QUESTION, "--model", "/dev/null"], capsys) == (
        "/dev/null is not a model file or folder (it is a device, pipe or socket); pass a .gguf file, a Hugging "
        "Face model folder or a hub id."
    )
    assert list(tmp_path.iterdir()) == []


def test_shards_naming_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    assert fails([*RUN_ARGS, "--shards", "afile", "--db", "new.duckdb"], capsys) == (
        "afile is a file, not a folder; pass a folder to --shards (it is created if missing)"
    )
    assert snapshot(tmp_path) == before


def new_manifest(tiny) -> dict:
    """A valid manifest of a new run (two templates) of QUERIES on tiny-llama."""
    return shards.make_manifest(tiny("llama"), "r", "tiny-set", "test", QUERIES, RunSettings(PromptSettings(2)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: '{"run_name": 3', r"run/manifest\.json is not valid JSON \(Expecting .+\); "),
        (
            lambda m: json.dumps({**m, "model_row": None}),
            r"run/manifest\.json: the field 'model_row' is missing or of another type; ",
        ),
        (lambda m: json.dumps([m]), r"run/manifest\.json: the field 'run_name' is missing or of another type; "),
        (
            lambda m: json.dumps({**m, "run_name": ".."}),
            re.escape(f"run/manifest.json: run name '..' is not allowed: {RULE}; "),
        ),
        (
            lambda m: json.dumps({**m, "queries": [{"id": 1}]}),
            r"run/manifest\.json holds unreadable settings or queries \(TypeError: .+\); ",
        ),
    ],
    ids=["not-json", "field-type", "not-object", "run-name", "queries"],
)
def test_malformed_shard_manifest_is_one_line(change, message, work, tiny, capsys):
    (work / "run").mkdir()
    (work / "run" / shards.MANIFEST).write_text(change(new_manifest(tiny)))
    before = snapshot(work)
    assert re.fullmatch(
        message + "copy the run folder again from where the run was made",
        fails(["merge", "run", "--db", "qrn.duckdb"], capsys),
    )
    assert snapshot(work) == before


@pytest.mark.parametrize("port", ["-1", "0", "65536"])
def test_explore_port_out_of_range_is_one_line(port, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        fails(["explore", "--port", port], capsys) == f"--port is {port}; pass a port from 1 to 65535 (default 8501)."
    )
    assert list(tmp_path.iterdir()) == []


def test_bench_store_with_negative_queries_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fails(["bench", "store", "--queries", "-5"], capsys) == "--queries is -5; it must be at least 1."
    assert list(tmp_path.iterdir()) == []


def test_steps_beyond_the_free_memory_are_refused_before_allocating(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * 2**30)
    message = fails(["attribute", *QUESTION, "--model", "tiny-llama", "--steps", "20000"], capsys)
    assert message == (
        "--steps 20000 needs at least 11.0 GiB for one attribution pass (20,000 scaled copies) but 4.0 GiB of cpu "
        "memory is free; pass fewer --steps."
    )
    assert list(tmp_path.iterdir()) == []


# --- 4. wrong acceptance ------------------------------------------------------------------------------------------


def edit_json(layer: str = "1", neuron: str = "2", multiplier: str = "0") -> str:
    """An edit file's text with one neuron, its numbers written as given (JSON as Python's json reads it)."""
    return (
        '{"format": "qrn-edit", "version": 1, "model": "m", "model_fingerprint": "f", '
        f'"neurons": [{{"layer": {layer}, "neuron": {neuron}, "multiplier": {multiplier}}}]}}'
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (edit_json(multiplier="Infinity"), "neuron 1:2 has multiplier inf; multipliers are finite numbers from 0"),
        (edit_json(multiplier="1e999"), "neuron 1:2 has multiplier inf; multipliers are finite numbers from 0"),
        (edit_json(multiplier="NaN"), "neuron 1:2 has multiplier nan; multipliers are finite numbers from 0"),
        (edit_json(layer="true"), "every neuron needs numbers layer, neuron and multiplier"),
        (edit_json(neuron="false"), "every neuron needs numbers layer, neuron and multiplier"),
        (edit_json(layer="1e300"), "neuron 1e+300:2 is not a layer and index (whole numbers from 0 to 2147483647)"),
        (edit_json(neuron="2.5"), "neuron 1:2.5 is not a layer and index (whole numbers from 0 to 2147483647)"),
    ],
)
def test_load_edit_refuses_numbers_that_are_no_edit(text, message, tmp_path):
    (tmp_path / "edit.json").write_text(text)
    with pytest.raises(QRNError, match=f"^edit\\.json: {re.escape(message)}"):
        edits.load_edit(tmp_path / "edit.json")


def test_inline_options_decide_the_labels_a_prompt_offers(work, capsys):
    prompt = "Which is a fruit? A. apple B. brick"
    (work / "inline.json").write_text(
        json.dumps({"q1": {"sentences": [prompt], "obj_label": ["C"], "relation_name": "food"}})
    )
    before = snapshot(work)
    assert fails(["import", "inline.json", "--db", "qrn.duckdb"], capsys) == (
        "inline.json: record 'q1': query 'q1': label 'C' of prompt 1 is not one of its options A, B; "
        "give the letter of an option it shows."
    )
    assert snapshot(work) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["attribute", "--question", "x"],
            "the following arguments are required: --answer; see `qrn attribute --help`",
        ),
        (["evaluate"], "the following arguments are required: --run; see `qrn evaluate --help`"),
        (
            ["run", "--dataset", "domain", "--steps", "x"],
            "argument --steps: invalid int value: 'x'; see `qrn run --help`",
        ),
        (["bench", "nope"], "argument what: invalid choice: 'nope' (choose from "),
    ],
)
def test_argument_errors_are_one_qrn_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fails(argv, capsys).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_refused_run_prints_one_line_no_progress_bar_and_leaves_the_folder_as_it_was(work, capsys):
    before = snapshot(work)
    assert fails([*RUN_ARGS, "--name", RUN, "--db", "qrn.duckdb"], capsys).startswith(
        f"run {RUN!r} already exists and differs in dataset"
    )
    assert snapshot(work) == before  # no row, no lock file


def test_refused_merge_leaves_the_folder_as_it_was(work, tiny, capsys):
    shards.write_manifest(work / "run", new_manifest(tiny))
    before = snapshot(work)
    assert fails(["merge", "run", "--db", "qrn.duckdb"], capsys) == "run holds no finished query yet; nothing to merge"
    assert snapshot(work) == before  # no row, no lock file
