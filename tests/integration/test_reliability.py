"""Hostile input on the command line (issue 13): results tied to their model, damaged stores refused, unfinished runs,
and one line with exit code 2 for every bad argument, with nothing on disk changed (bytes, mtimes, no new files)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import re
import shutil

import duckdb
import pytest
import torch

from qrcore import store
from qrcore.cli import main
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.model import load
from qrcore.model.load import load_model
from qrcore.model.spec import DEFAULT_MODEL, ModelSpec
from qrcore.runs.batch import plan_queries
from qrcore.store import connection, schema
from seeded_store import MODEL, QUERIES, RUN, seed_store

QUESTION = ["--question", "Capital?", "--option", "Paris", "--option", "Rome", "--answer", "Paris"]
ONE_GROUP = [dataclasses.replace(q, group="science") for q in QUERIES]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fails(argv: list[str], capsys) -> str:
    """The one line `qrn ARGV` prints before exiting with code 2 (the test fails on another exit code)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qrn: error: "), err
    return err.removeprefix("qrn: error: ").rstrip("\n")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny) -> Path:
    """A finished, evaluated tiny-llama run (two groups), a single-group run and an unfinished run, in one store."""
    path = tmp_path_factory.mktemp("seeded") / "qrn.duckdb"
    seed_store(path, tiny("llama"))
    seed_store(path, tiny("llama"), ONE_GROUP, run="one", dataset="one-group")
    seed_store(path, tiny("llama"), QUERIES, run="half", dataset="half-set", done=2)
    return path


@pytest.fixture
def work(seeded: Path, tmp_path: Path, monkeypatch) -> Path:
    """A folder of its own (the working directory) holding a copy of the seeded store as qrn.duckdb."""
    shutil.copy(seeded, tmp_path / "qrn.duckdb")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- 1. results are used only with the model that made them ---------------------------------------------------------


def test_evaluate_with_another_model_is_refused_naming_both(work, tiny, capsys):
    before = snapshot(work)
    message = fails(["evaluate", "--run", RUN, "--model", "tiny-gpt2", "--db", "qrn.duckdb"], capsys)
    assert message == (
        f"run {RUN!r} was computed with model {MODEL} ({tiny('llama').fingerprint}), not with "
        f"tiny-gpt2 ({tiny('gpt2').fingerprint}); use the run's model (qrn --model, or QRN_MODEL for "
        "the explorer)"
    )
    assert snapshot(work) == before


def test_evaluate_checks_the_run_before_loading_any_model(work, capsys):
    before = snapshot(work)
    assert (
        fails(["evaluate", "--run", "nope", "--model", "./no/such/model", "--db", "qrn.duckdb"], capsys)
        == "no run 'nope' in this store; stored runs: half, one, tiny-run"
    )
    assert snapshot(work) == before


# --- 2. a damaged store is refused for reading and writing, and never written ---------------------------------------

DAMAGED_COMMANDS = {
    "import": ["import", "new.csv"],
    "report": ["report", "--run", RUN, "--out", "out"],
    "export": ["export", "--run", RUN, "--out", "out"],
    "run": ["run", "--dataset", "domain", "--groups", "biology", "--per-group", "1", "--model", "tiny-llama"],
    "evaluate": ["evaluate", "--run", RUN, "--model", "tiny-llama"],
    "merge": ["merge", "shards"],
    "data stats": ["data", "stats", "--dataset", "tiny-set", "--model", "tiny-llama"],
}


@pytest.mark.parametrize("command", DAMAGED_COMMANDS)
def test_cut_short_store_is_refused_untouched(work, command, capsys):
    (work / "new.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n")
    full = (work / "qrn.duckdb").stat().st_size
    os.truncate(work / "qrn.duckdb", full // 2)
    before = snapshot(work)
    message = fails([*DAMAGED_COMMANDS[command], "--db", "qrn.duckdb"], capsys)
    assert re.fullmatch(
        rf"qrn\.duckdb is damaged: the file is {full // 2:,} bytes but its tables use blocks up to "
        r"byte [\d,]+; restore a copy or pass another --db",
        message,
    ), message
    assert snapshot(work) == before  # no lock file, no report, no write


def test_store_with_an_overwritten_block_is_refused_untouched(work, capsys):
    with (work / "qrn.duckdb").open("r+b") as f:  # the catalog's first block overwritten, as a bad disk would
        f.seek(connection.DUCKDB_HEADERS)
        f.write(b"\xff" * 4096)
    before = snapshot(work)
    message = fails(["export", "--run", RUN, "--db", "qrn.duckdb", "--out", "out"], capsys)
    assert re.fullmatch(
        r"qrn\.duckdb is damaged: DuckDB cannot open it \(.+\); restore a copy or pass another --db", message
    ), message
    assert snapshot(work) == before


def test_refused_foreign_store_gets_no_lock_file(work, capsys):
    (work / "new.csv").write_text("question,A,B,C,D,answer\nWhat is 2+2?,3,4,5,6,B\n")
    with duckdb.connect(str(work / "sales.duckdb")) as con:
        con.execute("CREATE TABLE sales (id INTEGER)")
    before = snapshot(work)
    assert (
        fails(["import", "new.csv", "--db", "sales.duckdb"], capsys)
        == "sales.duckdb is not a QR Neuron Explorer store (no meta table); pass another --db or move the file away"
    )
    assert snapshot(work) == before


def test_import_of_an_exported_folder_loads_its_runs_once(work, capsys):
    assert main(["export", "--run", RUN, "--out", "out", "--db", "qrn.duckdb"]) in (0, None)
    capsys.readouterr()
    assert main(["import", "out", "--db", "new.duckdb"]) in (0, None)
    assert capsys.readouterr().out == f"loaded out: the store now holds its runs {RUN}\n"
    assert main(["import", "out", "--db", "new.duckdb"]) in (0, None)
    assert capsys.readouterr().out == f"the store already holds every run of out: {RUN}\n"
    with (
        store.connect(work / "new.duckdb", read_only=True) as con,
        store.connect(work / "qrn.duckdb", read_only=True) as old,
    ):
        assert list(store.list_runs(con)["name"]) == [RUN]
        assert (
            run_analyses.heatmap(con, store.run_info(con, RUN).run_id, "science")
            == run_analyses.heatmap(old, store.run_info(old, RUN).run_id, "science")
        ).all()


def test_import_of_a_folder_that_is_not_an_export_is_refused_untouched(work, capsys):
    assert main(["export", "--run", RUN, "--out", "out", "--db", "qrn.duckdb"]) in (0, None)
    (work / "out" / "heatmaps.parquet").unlink()
    (work / "empty").mkdir()
    before = snapshot(work)
    assert fails(["import", "out", "--db", "qrn.duckdb"], capsys) == (
        "out is not a folder of exported runs: it lacks heatmaps.parquet; pass a folder that qrn export wrote"
    )
    assert fails(["import", "empty", "--db", "qrn.duckdb"], capsys) == (
        "empty is not a folder of exported runs: it lacks models.parquet and 10 more of the tables qrn export "
        "writes; pass a folder that qrn export wrote"
    )
    assert fails(["import", "out", "--name", "mine", "--db", "qrn.duckdb"], capsys) == (
        "--name names the dataset of a dataset file; a folder of runs keeps its own names: drop --name"
    )
    assert snapshot(work) == before


# --- migrations are built in a copy -------------------------------------------------------------------------------


def test_migration_is_built_in_a_copy_and_swapped_in_whole(work, monkeypatch):
    db = work / "qrn.duckdb"
    original = db.read_bytes()
    stale = work / f".qrn.duckdb{schema.TEMP_INFIX}999999999"  # left by a killed upgrade (no such process)
    stale.write_bytes(b"half a store")
    seen = []
    build = schema.build

    def watched(path: Path, version: int) -> None:
        build(path, version)
        seen.append((path.name, version, db.read_bytes() == original))  # the store itself is untouched until the swap

    monkeypatch.setattr(schema, "build", watched)
    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(
        schema,
        "MIGRATIONS",
        {
            **schema.MIGRATIONS,
            current: ["ALTER TABLE attributions ADD COLUMN doubled REAL", "UPDATE attributions SET doubled = 2 * na"],
        },
    )
    with store.connect(db, read_only=True) as con:
        assert dict(con.execute(schema.SELECT_META).fetchall())["schema_version"] == str(current + 1)
        assert con.execute("SELECT count(*), bool_and(doubled = 2 * na) FROM attributions").fetchone()[1]
    assert seen == [(f".qrn.duckdb{schema.TEMP_INFIX}{os.getpid()}", current, True)]
    assert sorted(p.name for p in work.iterdir()) == ["qrn.duckdb"]


# --- 4. tracebacks that became one line ---------------------------------------------------------------------------


def gguf_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken .gguf files and the messages they get: empty, a text file renamed, the real model cut short."""
    empty, text, cut = folder / "empty.gguf", folder / "notes.gguf", folder / "cut.gguf"
    empty.write_bytes(b"")
    text.write_text("these are my notes\n")
    with load.chunk_paths(DEFAULT_MODEL)[0].open("rb") as f:
        cut.write_bytes(f.read(3_000_000))
    return {
        "empty": (empty, re.escape(f"GGUF file {empty} is empty; pass a complete .gguf file.")),
        "text": (
            text,
            re.escape(f"{text} is not a GGUF file (it does not start with the bytes 'GGUF'); pass a .gguf model file."),
        ),
        "cut short": (
            cut,
            re.escape(f"cannot read GGUF file {cut} (")
            + r"[^\n]+"
            + re.escape("); it is cut short or damaged, pass a complete .gguf file."),
        ),
    }


@pytest.mark.parametrize("case", ["empty", "text", "cut short"])
def test_broken_gguf_file_is_one_line_and_leaves_the_cache_alone(case, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("QRN_CACHE", str(cache))
    path, pattern = gguf_cases(tmp_path)[case]
    assert re.fullmatch(pattern, fails(["attribute", *QUESTION, "--model", str(path)], capsys))
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("banana", 0, "unknown device 'banana'; use cpu, cuda, cuda:N or auto."),
        ("cuda", 0, "device 'cuda': torch sees no CUDA GPU on this machine; use --device cpu."),
        ("cuda:3", 2, "device 'cuda:3': this machine has 2 CUDA GPU(s), cuda:0 to cuda:1; pass one of them or cpu."),
    ],
)
def test_unusable_device_is_one_line(device, gpus, message, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert fails(["attribute", *QUESTION, "--model", "tiny-llama", "--device", device], capsys) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["export", "report"])
def test_out_that_is_a_file_is_one_line(work, command, capsys):
    (work / "taken").write_text("mine")
    before = snapshot(work)
    message = fails([command, "--run", RUN, "--db", "qrn.duckdb", "--out", "taken"], capsys)
    assert message == (
        "taken is a file, not a folder; pass a folder to --out (it is created if missing)"
        if command == "export"
        else f"taken is a file, so the folder taken/{RUN} cannot be made; pass another --out"
    )
    assert snapshot(work) == before


# --- 5. unfinished runs do not leave as if finished ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["report"], ["export", "--out", "out"], ["evaluate", "--model", "tiny-llama"]])
def test_unfinished_run_is_refused(work, command, capsys):
    before = snapshot(work)
    assert (
        fails([*command, "--run", "half", "--db", "qrn.duckdb"], capsys)
        == "run 'half' is unfinished (2 of 6 queries done); finish it first: the same qrn run again resumes it"
    )
    assert snapshot(work) == before


def test_report_of_a_run_without_evaluations_writes_what_it_has_and_says_how_to_add_the_rest(work, capsys):
    with duckdb.connect(str(work / "qrn.duckdb")) as con:
        con.execute("DELETE FROM evaluations")
    assert main(["report", "--run", RUN, "--db", "qrn.duckdb", "--out", "reports"]) == 0
    out, err = capsys.readouterr()
    folder = work / "reports" / RUN
    written = ("report.md", "accuracy.csv", "qr_neurons.csv", "stability.csv")  # stability needs no evaluation
    assert out.split() == [str(Path("reports") / RUN / f) for f in written]
    missing = (
        f"run {RUN!r} has no evaluations yet, so the report has no PCR, flip or prediction tables; "
        f"compute them with `qrn evaluate --run {RUN}`"
    )
    assert err == f"qrn: note: {missing}\n"
    report = (folder / "report.md").read_text()
    assert f"Run {RUN!r} has no evaluations yet" in report and "## accuracy" in report and "## pcr" not in report


# --- 6. wrong or missing checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top", "-5"], "--top is -5; it must be at least 1."),
        (["--templates", "99"], "--templates is 99; there are 3 prompt templates, so pass 1 to 3."),
        (["--option", "\u200b"], "an option is empty; remove it or fill it in."),
        (["--option", "Par\nis"], "option 'Par\\nis' contains a line break; write each option on one line."),
        (
            ["--model", "notes.txt"],
            "notes.txt is a file but not a .gguf model; pass a .gguf file, a Hugging Face model folder or a hub id.",
        ),
    ],
)
def test_attribute_argument_checks(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    before = snapshot(tmp_path)
    assert fails(["attribute", *QUESTION, "--model", "tiny-llama", *argv], capsys) == message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--dataset", "nosuch"],
            "unknown dataset 'nosuch'; use one of domain, language, a .json/.csv file, "
            "or a dataset imported with `qrn import`.",
        ),
        (
            ["--dataset", "domain", "--groups", "biology", "--per-group", "1", "--templates", "4"],
            "--templates is 4; there are 3 prompt templates, so pass 1 to 3.",
        ),
        (
            ["--dataset", "domain", "--groups", "biology", "--per-group", "0"],
            "--per-group is 0; it must be at least 1.",
        ),
    ],
)
def test_run_argument_checks_on_a_new_store(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert fails(["run", "--model", "tiny-llama", "--db", "new.duckdb", *argv], capsys) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tiny_models_take_dtype_and_device(dtype, tiny):
    lm = load_model(ModelSpec("tiny-llama", dtype, "cpu"))
    assert {p.dtype for p in lm.model.parameters()} == {getattr(torch, dtype)}
    assert lm.spec.dtype == dtype and lm.fingerprint != tiny("llama").fingerprint
    assert load_model(ModelSpec("tiny-llama")).fingerprint == tiny("llama").fingerprint


def test_paper_record_whose_label_the_prompt_does_not_offer_is_refused_at_import(work, capsys):
    prompt = "Which is a fruit?\n A. apple\n B. brick\n C. chair\n"
    (work / "paper.json").write_text(
        json.dumps({"q1": {"sentences": [prompt, prompt], "obj_label": ["A", "D"], "relation_name": "food"}})
    )
    before = snapshot(work)
    assert fails(["import", "paper.json", "--db", "qrn.duckdb"], capsys) == (
        "paper.json: record 'q1': query 'q1': label 'D' of prompt 2 is not one of its options A, B, C; "
        "give the letter of an option it shows."
    )
    assert snapshot(work) == before


def test_stored_query_that_cannot_be_asked_fails_before_the_run_starts(work):
    bad = Query(id="z1", group="g", question="Pick?", prompts=("Pick?\n A. x\n B. y\n",), labels=("C",))
    with duckdb.connect(str(work / "qrn.duckdb")) as con:  # stored by a qrn that did not check labels
        con.execute("INSERT INTO datasets VALUES ('d-old', 'old', 'test', current_timestamp)")
        con.execute(
            "INSERT INTO queries VALUES ('d-old', 'z1', 0, 'g', 'Pick?', '', '[]', '', ?, '[\"C\"]', '{}')",
            [json.dumps(bad.prompts)],
        )
    with pytest.raises(QRNError, match=r"^query 'z1': label 'C' of prompt 1 is not one of its options A, B; "):
        plan_queries("old", str(work / "qrn.duckdb"))


# --- 7. PCR needs two groups ----------------------------------------------------------------------------------------


def test_evaluate_of_a_single_group_run_says_pcr_needs_two_groups(work, capsys):
    before = snapshot(work)
    assert fails(["evaluate", "--run", "one", "--model", "tiny-llama", "--db", "qrn.duckdb"], capsys) == (
        "run 'one' has QR neurons in 1 group(s) (science); PCR compares each query with a query of another group, "
        "so evaluate a run of at least two groups"
    )
    assert snapshot(work) == before


# --- 8. one computation of the correct letter's probability ---------------------------------------------------------


def test_attribute_prints_one_probability_for_the_correct_letter(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["attribute", *QUESTION, "--model", "tiny-llama", "--dtype", "bfloat16", "--templates", "1", "--steps", "2"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["probs"][out["correct"]] == out["correct_prob_mean"]
    assert main(args) == 0
    text = capsys.readouterr().out
    table = re.search(r"(\d\.\d{4})  <- correct", text)[1]
    assert re.search(r"Mean correct-letter probability over 1 templates: (\d\.\d{4})", text)[1] == table


def test_bench_evaluation_refuses_no_queries_before_loading_a_model(capsys, monkeypatch):
    monkeypatch.setattr("qrcore.cli._load", lambda args: pytest.fail("a model was loaded"))
    assert fails(["bench", "evaluation", "--queries", "0"], capsys) == "--queries is 0; it must be at least 1."
