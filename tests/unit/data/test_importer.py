"""Importing the paper's released JSON and MMLU-style CSV files, and the one-line messages for malformed files."""

from __future__ import annotations

import json
from pathlib import Path
import re

import pytest

from qrcore.data.datasets import dataset_stats, groups, import_file
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from repo import PAPER_DATA, REPO

DOMAIN_GROUPS = ["biology", "physics", "chemistry", "mathematics", "computer_science", "geography"]

PAPER_FILES = {
    "subject_qa.json": (552, {**dict.fromkeys(DOMAIN_GROUPS, 100), "computer_science": 52}),
    "language_qa.json": (600, dict.fromkeys(["ar", "en", "fr", "ja", "ru", "zh"], 100)),
    "domain_sample_multi_choice_qa.json": (18, dict.fromkeys(DOMAIN_GROUPS, 3)),
}


OWN_FILES = {"paper_format_subject.json": "subject", "paper_format_language.json": "language"}
"""Small files of our own in the paper's format (tests/data), so the format is tested on any clone."""


def paper_file(name: str) -> Path:
    """A file in the paper's format: one of OWN_FILES, or the paper's released data beside the repository
    (shared/paper-data), whose tests skip, saying why, where it is absent (any clone outside this workspace)."""
    if name in OWN_FILES:
        return REPO / "tests" / "data" / name
    path = PAPER_DATA / name
    if not path.is_file():
        pytest.skip(f"the paper's released data is not beside this clone ({path} is missing)")
    return path


def error_of(path: Path, name: str | None = None) -> str:
    """The QRNError message that importing `path` raises (the test fails if it imports)."""
    with pytest.raises(QRNError) as err:
        import_file(path, name)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- the paper's released files ---


@pytest.mark.parametrize("name", PAPER_FILES)
def test_paper_file_counts_and_groups(name: str) -> None:
    """Every record becomes one query, with the paper's group sizes."""
    n, per_group = PAPER_FILES[name]
    queries = import_file(paper_file(name))
    raw = json.loads(paper_file(name).read_text("utf-8"))
    assert len(queries) == n
    assert dict(dataset_stats(queries).values.tolist()) == per_group
    assert groups(queries) == list(dict.fromkeys(rec["relation_name"] for rec in raw.values()))


@pytest.mark.parametrize("name", [*OWN_FILES, *PAPER_FILES])
def test_paper_prompts_and_labels_line_up(name: str) -> None:
    """Ids are the JSON keys; each prompt has its letter, and that letter is an option of that prompt."""
    raw = json.loads(paper_file(name).read_text("utf-8"))
    queries = import_file(paper_file(name))
    assert [q.id for q in queries] == list(raw)
    for q in queries:
        rec = raw[q.id]
        assert q.prompts == tuple(rec["sentences"]) and q.labels == tuple(rec["obj_label"])
        assert q.question == q.prompts[0] and len(q.prompts) == len(q.labels) == 3
        assert q.group == rec["relation_name"]
        for prompt, label in zip(q.prompts, q.labels):
            assert re.fullmatch(r"[A-Z]", label)
            option = re.search(rf"\n {label}\. (.*)\n", prompt)
            assert option, (q.id, label)
            if q.answer:
                assert option.group(1).strip() == q.answer


@pytest.mark.parametrize(
    ("language", "subject", "relations"),
    [
        ("paper_format_language.json", "paper_format_subject.json", {"P36", "P17"}),
        ("language_qa.json", "subject_qa.json", {"P19", "P108", "P1303", "P159", "P17"}),
    ],
)
def test_paper_language_file_keeps_answer_and_relation(language: str, subject: str, relations: set[str]) -> None:
    """`ori_label` becomes the answer and the LAMA `relation` id the query's relation."""
    queries = import_file(paper_file(language))
    assert all(q.answer for q in queries)
    assert {q.relation for q in queries} == relations
    assert import_file(paper_file(subject))[0].answer == ""


def test_own_paper_format_files_import_with_their_groups() -> None:
    subject = import_file(paper_file("paper_format_subject.json"))
    assert [q.id for q in subject] == ["s-bio-1", "s-bio-2", "s-phy-1", "s-phy-2"]
    assert dict(dataset_stats(subject).values.tolist()) == {"biology": 2, "physics": 2}
    assert [q.answer for q in import_file(paper_file("paper_format_language.json"))] == ["Paris", "Rome", "Japan"]


def test_paper_format_extra_keys_go_to_meta(tmp_path: Path) -> None:
    """Unknown keys are kept in `meta`; a non-string ori_label becomes a string."""
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "q1": {
                    "sentences": ["Pick one\n A. x\n B. y\n"],
                    "obj_label": ["B"],
                    "relation_name": "toy",
                    "ori_label": 7,
                    "source": "me",
                }
            }
        ),
        "utf-8",
    )
    assert import_file(path) == [
        Query(
            id="q1",
            group="toy",
            question="Pick one\n A. x\n B. y\n",
            answer="7",
            prompts=("Pick one\n A. x\n B. y\n",),
            labels=("B",),
        )
    ]
    assert import_file(path)[0].meta == {"source": "me"}


# --- MMLU-style CSV ---


def test_csv_with_subject_column(tmp_path: Path) -> None:
    """Answer letters map to option text, the other options stay in order, ids are `<stem>-<line>`."""
    path = tmp_path / "quiz.csv"
    path.write_text(
        "question,A,B,C,D,answer,subject\n"
        '"What is 2+2, in words?",three,four,five,six,B,math\n'
        "\n"
        "What is the capital of Japan?,Osaka,Kyoto,Tokyo,Nagoya, c ,geo\n",
        "utf-8",
    )
    assert import_file(path) == [
        Query(
            id="quiz-2",
            group="math",
            question="What is 2+2, in words?",
            answer="four",
            distractors=("three", "five", "six"),
        ),
        Query(
            id="quiz-4",
            group="geo",
            question="What is the capital of Japan?",
            answer="Tokyo",
            distractors=("Osaka", "Kyoto", "Nagoya"),
        ),
    ]


def test_csv_group_column_wins_over_subject_and_bom_is_ignored(tmp_path: Path) -> None:
    """`group` is preferred to `subject`; a UTF-8 byte-order mark does not hide the first column name."""
    path = tmp_path / "quiz.csv"
    path.write_bytes("question,A,B,C,D,answer,subject,group\nQ?,a,b,c,d,D,s,g\n".encode("utf-8-sig"))
    assert [(q.group, q.answer) for q in import_file(path)] == [("g", "d")]


def test_csv_without_group_column_uses_stem_or_name(tmp_path: Path) -> None:
    """Without a group column every query is in one group: the given name, else the file stem."""
    path = tmp_path / "physics_quiz.csv"
    path.write_text("question,A,B,C,D,answer\nUnit of force?,Joule,Newton,Watt,Volt,B\n", "utf-8")
    assert [(q.id, q.group) for q in import_file(path)] == [("physics_quiz-2", "physics_quiz")]
    assert [(q.id, q.group) for q in import_file(path, "phys")] == [("phys-2", "phys")]


# --- malformed files: one line naming the file, the record and the field, and what to do ---


def write(tmp_path: Path, name: str, content: str | dict) -> Path:
    """Write `content` (text, or an object dumped as JSON) to tmp_path/name."""
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


GOOD = {"sentences": ["p1", "p2", "p3"], "obj_label": ["A", "B", "C"], "relation_name": "biology"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"obj_label": ["A", "B"]},
            "subject_qa.json: record '12': field 'obj_label' has 2 labels for 3 sentences; give one letter per sentence.",
        ),
        (
            {"obj_label": ["A", "b", "C"]},
            "subject_qa.json: record '12': field 'obj_label' item 2 is 'b'; give a single capital letter A-Z.",
        ),
        (
            {"obj_label": ["A", "B", "AB"]},
            "subject_qa.json: record '12': field 'obj_label' item 3 is 'AB'; give a single capital letter A-Z.",
        ),
        (
            {"obj_label": [1, "B", "C"]},
            "subject_qa.json: record '12': field 'obj_label' item 1 is 1; give a single capital letter A-Z.",
        ),
        (
            {"obj_label": "ABC"},
            "subject_qa.json: record '12': field 'obj_label' must be a list of letters; give one letter per sentence.",
        ),
        (
            {"sentences": ["p1", "  ", "p3"]},
            "subject_qa.json: record '12': field 'sentences' item 2 is empty; remove it or write the prompt.",
        ),
        (
            {"sentences": []},
            "subject_qa.json: record '12': field 'sentences' must be a non-empty list of strings; give the prompts.",
        ),
        (
            {"sentences": "p1"},
            "subject_qa.json: record '12': field 'sentences' must be a non-empty list of strings; give the prompts.",
        ),
        (
            {"relation_name": ""},
            "subject_qa.json: record '12': field 'relation_name' must be a non-empty string; give the group name.",
        ),
    ],
)
def test_paper_record_errors(tmp_path: Path, change: dict, message: str) -> None:
    """A bad record is named with its id and field, even after good records (all-or-nothing)."""
    path = write(tmp_path, "subject_qa.json", {"11": GOOD, "12": {**GOOD, **change}})
    assert error_of(path) == message


@pytest.mark.parametrize("field", ["sentences", "obj_label", "relation_name"])
def test_paper_missing_field(tmp_path: Path, field: str) -> None:
    """Each required field is named when it is missing."""
    rec = {k: v for k, v in GOOD.items() if k != field}
    path = write(tmp_path, "subject_qa.json", {"12": rec})
    assert error_of(path) == f"subject_qa.json: record '12': field '{field}' is missing; add it."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "[1, 2]",
            'data.json: not a JSON object; expected {id: {"sentences": [...], "obj_label": [...], '
            '"relation_name": ...}}.',
        ),
        ('{"7": [1]}', "data.json: record '7': not a JSON object; give sentences, obj_label and relation_name."),
        ("{}", "data.json: no records; add at least one query."),
        (
            '{"7": %s, "8": %s, "7": %s}' % ((json.dumps(GOOD),) * 3),
            "data.json: record '7': duplicate id; ids must be unique.",
        ),
        (
            '{"7": {"sentences": ["p"], "obj_label": ["A"], "relation_name": "x", "obj_label": ["B"]}}',
            "data.json: record '7': field 'obj_label' appears twice; keep one.",
        ),
    ],
)
def test_paper_file_errors(tmp_path: Path, content: str, message: str) -> None:
    """Whole-file problems: not an object, a record not an object, empty, repeated ids or fields."""
    assert error_of(write(tmp_path, "data.json", content)) == message


def test_not_json(tmp_path: Path) -> None:
    """Broken JSON says where it broke."""
    message = error_of(write(tmp_path, "data.json", '{"a": \n  [1,}'))
    assert message.startswith("data.json: not valid JSON (line 2, column ")
    assert message.endswith("; fix the syntax or export the file again.")


CSV_HEAD = "question,A,B,C,D,answer\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "question,A,B,C,answer\nQ?,a,b,c,A\n",
            "quiz.csv: line 1: column 'D' is missing; the first line must be a header with columns question, A, B, C, D, "
            "answer (and optionally group).",
        ),
        (
            "Q?,a,b,c,d,A\n",
            "quiz.csv: line 1: column 'question' is missing; the first line must be a header with columns question, A, B, "
            "C, D, answer (and optionally group).",
        ),
        (
            "question,A,B,C,D,answer,A\nQ?,a,b,c,d,A,a\n",
            "quiz.csv: line 1: column 'A' appears twice in the header; keep one.",
        ),
        (
            CSV_HEAD + "Q?,a,b,c,d,A\nQ2?,a,b,c,d,E\n",
            "quiz.csv: line 3: field 'answer' is 'E'; give one of the letters A, B, C, D.",
        ),
        (CSV_HEAD + "Q?,a,b,c,d,\n", "quiz.csv: line 2: field 'answer' is ''; give one of the letters A, B, C, D."),
        (CSV_HEAD + " ,a,b,c,d,A\n", "quiz.csv: line 2: field 'question' is empty; fill it in."),
        (CSV_HEAD + "Q?,a,,c,d,A\n", "quiz.csv: line 2: field 'B' is empty; fill it in."),
        ("question,A,B,C,D,answer,group\nQ?,a,b,c,d,A,\n", "quiz.csv: line 2: field 'group' is empty; fill it in."),
        (
            CSV_HEAD + "Q?,a,b,c,d\n",
            "quiz.csv: line 2: 5 fields but the header has 6; give every column a value and quote values that contain "
            "commas.",
        ),
        (
            CSV_HEAD + 'Q?,a,b,c,d,A\n"multi\nline?",1,2,3,4,5,A\n',
            "quiz.csv: line 3: 7 fields but the header has 6; give every column a value and quote values that contain "
            "commas.",
        ),
        (
            CSV_HEAD + "Q?,a,b,c,d,C\n\nQ2?,x,X,y,z,A\n",
            "quiz.csv: line 4: query 'quiz-4': option 'x' appears twice; options must be distinct.",
        ),
        (CSV_HEAD, "quiz.csv: no records; add at least one query."),
        ("", "quiz.csv: no records; add a header line and at least one query."),
        (
            CSV_HEAD + 'Q?,a,b,c,d,A\nQ2?,"' + "x" * 200_000 + '",b,c,d,A\n',
            "quiz.csv: line 3: not valid CSV (field larger than field limit (131072)); fix the quoting.",
        ),
    ],
)
def test_csv_errors(tmp_path: Path, content: str, message: str) -> None:
    """CSV problems name the line and the column; nothing is returned if any line is bad."""
    assert error_of(write(tmp_path, "quiz.csv", content)) == message


def test_unknown_extension_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    """The format is chosen by extension; unreadable files get a one-line message too."""
    assert error_of(write(tmp_path, "quiz.txt", CSV_HEAD)) == (
        "quiz.txt: unknown extension '.txt'; give a .json file (the paper's format) or a .csv file (MMLU-style)."
    )
    assert error_of(write(tmp_path, "quiz", CSV_HEAD)) == (
        "quiz: unknown extension '(none)'; give a .json file (the paper's format) or a .csv file (MMLU-style)."
    )
    assert (
        error_of(tmp_path / "absent.csv")
        == f"absent.csv: no such file {str(tmp_path / 'absent.csv')!r}; check the path."
    )
    latin1 = tmp_path / "latin.csv"
    latin1.write_bytes((CSV_HEAD + "Caf\xe9?,a,b,c,d,A\n").encode("latin-1"))
    assert error_of(latin1) == "latin.csv: not UTF-8 text; save it as UTF-8."


def test_upper_case_extension_is_accepted(tmp_path: Path) -> None:
    """`.CSV` and `.JSON` are the same formats."""
    path = write(tmp_path, "Quiz.CSV", CSV_HEAD + "Q?,a,b,c,d,A\n")
    assert [q.group for q in import_file(path)] == ["Quiz"]
