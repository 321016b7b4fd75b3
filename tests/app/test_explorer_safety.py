"""The explorer under hostile data (issue 13): user text (names of runs, datasets, groups and queries, questions,
options, answers, generated text) shows as text, never as an image or a link; a run's queries are edited only with
the run's own model; a damaged store is refused untouched."""

from __future__ import annotations

import html
from pathlib import Path
import re

import pytest
from streamlit.testing.v1 import AppTest

from app_driver import APP, PAGES, button, errors, page, plot_strings
from markdown_view import rendered, shown, text_of
from seeded_store import HOSTILE, MODEL, QUERIES, RUN, hostile, seed_store

MARKDOWN_ELEMENTS = ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader")
"""AppTest element lists whose values Streamlit renders as Markdown."""
AUTOLINKS = (re.compile(r"(https?://|www(?=\.))[-.\w]+", re.IGNORECASE), re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+"))
"""The literal autolinks of remark-gfm, which Streamlit's Markdown renderer uses (regexes from its frontend bundle)."""


def markdown_bodies(at: AppTest) -> list[str]:
    """Every Markdown body on the page, sidebar included."""
    return [e.value for kind in MARKDOWN_ELEMENTS for e in getattr(at, kind)]


def assert_shown_as_text(at: AppTest) -> int:
    """Assert that nothing on the page makes an image, a link or an HTML tag; the number of places showing HOSTILE."""
    assert not at.exception, at.exception
    for body in markdown_bodies(at):
        out = rendered(body)
        assert "<img" not in out and "<a " not in out, body
        assert not any(p.search(text_of(body)) for p in AUTOLINKS), body
    for text in plot_strings(at):
        assert not re.search(r"<\s*(a|img)\b", text, re.IGNORECASE), text
    return sum(HOSTILE in shown(b) for b in markdown_bodies(at)) + sum(
        HOSTILE in html.unescape(t) for t in plot_strings(at)
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny) -> Path:
    """A finished tiny-llama run whose run, dataset, groups, queries, questions and options all carry HOSTILE
    (test_explorer's `db` fixture gives each test a copy of it)."""
    path = tmp_path_factory.mktemp("hostile") / "qrn.duckdb"
    seed_store(path, tiny("llama"), [hostile(q) for q in QUERIES], run=f"run {HOSTILE}", dataset=f"set {HOSTILE}")
    return path


TYPED = {"search": {"q": HOSTILE, "by": "question"}}
"""What a page shows only once the user types it: the search page's caption quotes the searched text."""


@pytest.mark.parametrize("name", [p for p in PAGES if p != "data"])
def test_names_questions_and_options_show_as_text(db, name):
    at = page(name, mode="side by side", **TYPED.get(name, {}))
    assert assert_shown_as_text(at) > 0  # the page does show the hostile text, as text
    assert not at.error, errors(at)


def test_data_page_and_a_refused_dataset_name_show_as_text(db):
    at = page("data")
    assert_shown_as_text(at)
    at.file_uploader(key="upload").set_value(("quiz.csv", b"question,A,B,C,D,answer\nQ?,a,b,c,d,A\n", "text/csv")).run()
    at.text_input(key="dataset_name").set_value(f"quiz {HOSTILE}").run()
    button(at, "Import").click().run()
    assert_shown_as_text(at)  # the refusal quotes the name, as text
    assert not at.success and len(at.error) == 1, errors(at)
    assert errors(at)[0].startswith(f"dataset name 'quiz {HOSTILE[:20]}") and "is not allowed" in errors(at)[0]


def test_typed_answer_in_the_error_shows_as_text(db):
    at = page("lab", source="custom")
    at.text_input(key="q_answer").set_value(HOSTILE).run()
    assert assert_shown_as_text(at) > 0
    assert errors(at) == [
        f"the answer {HOSTILE!r} is not among the options ['Paris', 'London', 'Berlin', 'Madrid']; "
        "pass it as one of the options."
    ]


def test_generated_answer_shows_as_text(db, monkeypatch):
    monkeypatch.setattr(
        "qrcore.editing.streaming.stream", lambda lm, question, edit=None: iter([question, f" -> {HOSTILE}"])
    )
    at = page("lab", source="custom")
    at.text_input(key="q_text").set_value("Which answer does the generator give here?").run()  # not cached yet
    button(at, "Generate free-form answers").click().run()
    assert assert_shown_as_text(at) >= 2  # the unedited and the edited answer


@pytest.fixture
def other_model_db(db: Path, tmp_path: Path, tiny, monkeypatch) -> Path:
    """A run computed by tiny-qwen2 but stored under the app model's name, the app running tiny-llama."""
    path = tmp_path / "other.duckdb"
    seed_store(path, tiny("qwen2"), model=MODEL)
    monkeypatch.setenv("QRN_DB", str(path))
    return path


def test_query_lab_refuses_a_run_of_another_model_naming_both(other_model_db, tiny):
    at = page("lab", query="geo-1")
    assert errors(at) == [
        f"run {RUN!r} was computed with model {MODEL} ({tiny('qwen2').fingerprint}), not with "
        f"{MODEL} ({tiny('llama').fingerprint}); use the run's model (qrn --model, or QRN_MODEL for "
        "the explorer)"
    ]
    assert not at.metric and not at.get("plotly_chart")  # nothing edited with the wrong model
    at.radio(key="source").set_value("custom").run()
    assert not at.error and at.metric  # a question of one's own still works


def test_heatmap_projects_no_tokens_with_another_model(other_model_db):
    at = page("heatmaps")
    assert not at.exception and not at.error
    assert any("No vocabulary tokens: the installed tiny-llama has other weights" in shown(c.value) for c in at.caption)
    assert all("tokens:" not in text for text in plot_strings(at))


@pytest.mark.parametrize("name", PAGES)
def test_damaged_store_is_refused_on_every_page_and_left_untouched(db, name, monkeypatch):
    full = db.stat().st_size
    db.write_bytes(db.read_bytes()[: full // 2])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in db.parent.iterdir()}
    monkeypatch.setenv("QRN_SHIPPED", "1")  # start-up would load the shipped runs into it
    line = (
        rf"{re.escape(str(db))} is damaged: the file is {full // 2:,} bytes but its tables use blocks up to byte "
        r"[\d,]+; restore a copy or pass another --db"
    )
    at = AppTest.from_file(str(APP), default_timeout=60).run()  # the main script: start-up
    assert not at.exception and len(at.error) == 1 and re.fullmatch(line, errors(at)[0]), errors(at)
    at.switch_page(f"sections/{name}.py").run()
    assert not at.exception and len(at.error) == 1 and re.fullmatch(line, errors(at)[0]), errors(at)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in db.parent.iterdir()} == before
