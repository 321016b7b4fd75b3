"""Bad input: one line naming what is wrong and what to do, exit code 2, nothing written."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from qrcore.cli import main
from qrcore.data.prompts import query_prompts
from qrcore.data.queries import make_query
from qrcore.errors import QRNError
from qrcore.model import load
from qrcore.model.ffn import ffn_sites

OPTS = ["--option", "Paris", "--option", "Rome"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--question", "  ", *OPTS, "--answer", "Paris"], "the question is empty; write a question."),
        (
            ["--question", "Capital?", *OPTS, "--answer", "Oslo"],
            "the answer 'Oslo' is not among the options ['Paris', 'Rome']; pass it as one of the options.",
        ),
        (
            ["--question", "Capital?", "--option", "Paris", "--answer", "Paris"],
            "1 option(s) given; give at least 2 options.",
        ),
        (
            ["--question", "Capital?", *[a for i in range(27) for a in ("--option", f"o{i}")], "--answer", "o1"],
            "27 options given, more than the 26 letters A-Z; give at most 26.",
        ),
        (
            ["--question", "Capital?", *OPTS, "--option", "paris", "--answer", "Paris"],
            "option 'Paris' appears twice; options must be distinct.",
        ),
        (
            ["--question", "Capital?", *OPTS, "--answer", "Paris", "--model", "./no/such/model"],
            "model path ./no/such/model does not exist; check the path.",
        ),
        (
            ["--question", "Capital?", *OPTS, "--answer", "Paris", "--model", "missing.gguf"],
            "GGUF file missing.gguf does not exist; check the path.",
        ),
    ],
)
def test_attribute_bad_input_prints_one_line_and_exits_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["attribute", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"qrn: error: {message}\n"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unsupported_architecture_names_the_class_and_what_was_looked_for():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Linear(4, 4)

    class Odd(torch.nn.Module):
        config = type("C", (), {"num_hidden_layers": 2})()

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(
        QRNError,
        match=r"^Odd: decoder layer 0 has no FFN submodule named one of \('mlp', 'feed_forward', 'ffn'\); "
        r"this architecture is not supported\.$",
    ):
        ffn_sites(Odd())


def test_prompt_over_the_context_is_an_error(tokenizer):
    query = make_query("Why? " * 200, ["Yes", "No"], "Yes")
    with pytest.raises(QRNError, match=r"^the prompt is \d+ tokens, over the model's context of 64; shorten"):
        query_prompts(query, tokenizer, max_length=64)


def test_partly_written_model_cache_is_redone_never_loaded(tmp_path, monkeypatch):
    """A conversion folder without its completion marker (a killed conversion) is converted again."""
    monkeypatch.setenv("QRN_CACHE", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    target = tmp_path / "models" / load._slug(gguf)
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half")  # left by a killed conversion
    calls = []

    def fake_convert(src, dst):
        calls.append(dst)
        (dst / load.COMPLETE_MARKER).write_text("{}")
        return dst

    monkeypatch.setattr(load, "convert_gguf", fake_convert)
    assert load.gguf_to_folder(gguf) == target and calls == [target]
    assert load.gguf_to_folder(gguf) == target and calls == [target]  # complete now: not converted again


def test_a_shipped_run_named_on_a_new_store_loads_the_shipped_runs_first(tmp_path, monkeypatch, capsys):
    """The README's `qrn report --run domain-smollm2` on a new machine: the shipped runs are loaded, as the explorer's
    first start does; with $QRN_SHIPPED=0, or a name no shipped run has, the store is not made."""
    import duckdb

    db = tmp_path / "new.duckdb"
    monkeypatch.setenv("QRN_DB", str(db))
    monkeypatch.setenv("QRN_SHIPPED", "0")
    assert main(["report", "--run", "domain-smollm2", "--out", str(tmp_path / "off")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("QRN_SHIPPED", "1")
    assert main(["report", "--run", "mine", "--out", str(tmp_path / "mine")]) == 2
    assert not db.exists()
    assert main(["report", "--run", "domain-smollm2", "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "domain-smollm2" / "report.md").is_file()
    with duckdb.connect(str(db), read_only=True) as con:
        names = {n for (n,) in con.execute("SELECT name FROM runs").fetchall()}
    assert {"domain-smollm2", "domain-qwen2", "language-smollm2", "language-qwen2"} <= names


def test_report_vocab_table_5_on_a_shipped_run_and_its_refusals(tmp_path, monkeypatch, capsys):
    """`qrn report --vocab`: Table 5 from the run's own model; two runs, or a run of another model, get one line."""
    monkeypatch.setenv("QRN_DB", str(tmp_path / "qrn.duckdb"))
    monkeypatch.setenv("QRN_SHIPPED", "1")
    out = tmp_path / "rep"
    two = ["report", "--vocab", "--run", "domain-smollm2", "--run", "domain-qwen2", "--out", str(out)]
    assert main(two) == 2
    assert "--vocab is for one run's report; name one --run" in capsys.readouterr().err
    assert main(["report", "--vocab", "--run", "domain-qwen2", "--out", str(out)]) == 2
    assert "was computed with model qwen2.5-coder-1.5b" in capsys.readouterr().err
    assert not (out / "domain-qwen2").exists()
    assert main(["report", "--vocab", "--run", "domain-smollm2", "--out", str(out)]) == 0
    common = pd.read_csv(out / "domain-smollm2" / "common_vocab.csv")
    assert len(common) > 0 and common["tokens"].str.len().gt(0).all()
    assert set(pd.read_csv(out / "domain-smollm2" / "group_vocab.csv")["group_name"]) == {
        "biology",
        "chemistry",
        "computer_science",
        "geography",
        "mathematics",
        "physics",
    }
