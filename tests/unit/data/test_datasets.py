"""The built-in datasets meet the project's rules: unique ids, 4 distinct options, >= 50 queries per group,
every language fact in all 6 languages, each language in its own script. Each check is also fed a broken record."""

from __future__ import annotations

from collections import defaultdict
import dataclasses
from importlib import resources
import json
import re
import unicodedata

import pytest

from qrcore.data.datasets import BUILTIN, dataset_stats, groups, load_builtin
from qrcore.data.queries import Query
from qrcore.errors import QRNError

DOMAIN_GROUPS = ["biology", "physics", "chemistry", "mathematics", "computer_science", "geography"]
LANGUAGES = ["ar", "en", "fr", "ja", "ru", "zh"]
RELATIONS = {"birth_place", "employer", "instrument", "headquarters_location", "host_country"}
MIN_PER_GROUP = 50

ALLOWED_SCRIPTS = {
    "ar": {"arabic"},
    "en": {"latin"},
    "fr": {"latin"},
    "ru": {"cyrillic"},
    "zh": {"han"},
    "ja": {"han", "kana"},
}
"""The scripts whose letters may appear in each language's questions and answers (digits and punctuation are free)."""


def letter_scripts(text: str) -> set[str]:
    """The scripts of the letters in `text`: latin, cyrillic, arabic, kana, han, or `other:<NAME>`."""
    found = set()
    for ch in text:
        if not unicodedata.category(ch).startswith("L"):
            continue
        name = unicodedata.name(ch, "UNKNOWN")
        if name.startswith(("HIRAGANA", "KATAKANA")):
            found.add("kana")
        elif name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")):
            found.add("han")
        elif name.split()[0] in ("LATIN", "CYRILLIC", "ARABIC"):
            found.add(name.split()[0].lower())
        else:
            found.add(f"other:{name.split()[0]}")
    return found


def script_problems(q: Query) -> list[str]:
    """What is wrong with the script of a language query's question and options (empty if nothing)."""
    problems = []
    allowed = ALLOWED_SCRIPTS[q.group]
    for what, text in [("question", q.question), *(("option", o) for o in q.options())]:
        scripts = letter_scripts(text)
        if not scripts:
            problems.append(f"{q.id}: {what} {text!r} has no letters")
        elif not scripts <= allowed:
            problems.append(f"{q.id}: {what} {text!r} uses {sorted(scripts - allowed)}, not {sorted(allowed)}")
    if q.group == "ja" and "kana" not in letter_scripts(q.question):
        problems.append(f"{q.id}: Japanese question {q.question!r} has no hiragana or katakana")
    return problems


def answer_leaks(question: str, answer: str) -> bool:
    """Whether `answer` appears verbatim in `question`: as a whole word, except in Chinese/Japanese (no spaces)."""

    def word_edge(ch: str) -> bool:
        """Whether `ch` is a letter or digit of a script that separates words with spaces."""
        return ch.isalnum() and not letter_scripts(ch) & {"han", "kana"}

    left = r"(?<!\w)" if word_edge(answer[:1]) else ""
    right = r"(?!\w)" if word_edge(answer[-1:]) else ""
    return re.search(left + re.escape(answer) + right, question, re.IGNORECASE) is not None


def option_problems(q: Query) -> list[str]:
    """What is wrong with a built-in query's options: 4 distinct, non-empty, one correct, answer not in question."""
    problems = []
    opts = [o.strip().casefold() for o in q.options()]
    if len(opts) != 4:
        problems.append(f"{q.id}: {len(opts)} options, want 4 (answer + 3 distractors)")
    if any(not o for o in opts):
        problems.append(f"{q.id}: an option is empty")
    if len(set(opts)) != len(opts):
        problems.append(f"{q.id}: options are not distinct: {list(q.options())}")
    if opts and opts[0] in opts[1:]:
        problems.append(f"{q.id}: the answer {q.answer!r} is also a distractor, so two options are correct")
    if not q.question.strip().endswith(("?", "？", "؟")):
        problems.append(f"{q.id}: the question does not end with a question mark")
    if q.answer.strip() and answer_leaks(q.question, q.answer.strip()):
        problems.append(f"{q.id}: the answer {q.answer!r} appears in the question")
    return problems


def structure_problems(queries: list[Query], expected_groups: list[str]) -> list[str]:
    """What is wrong with a dataset as a whole: unique ids, exactly the expected groups, >= 50 queries each."""
    problems = []
    ids = [q.id for q in queries]
    problems += [f"duplicate id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if sorted(groups(queries)) != sorted(expected_groups):
        problems.append(f"groups {groups(queries)}, want {expected_groups}")
    counts = dataset_stats(queries).set_index("group")["n_queries"]
    problems += [
        f"group {g!r} has {n} queries, want >= {MIN_PER_GROUP}" for g, n in counts.items() if n < MIN_PER_GROUP
    ]
    return problems


def fact_problems(queries: list[Query]) -> list[str]:
    """What is wrong with the language set's facts: each in all 6 languages, same relation, ids `<fact>-<lang>`,
    and distractors that are the answers of the same other facts of that relation in every language."""
    problems = []
    by_fact: dict[str, dict[str, Query]] = defaultdict(dict)
    for q in queries:
        fact = q.meta.get("fact", "")
        if q.relation not in RELATIONS:
            problems.append(f"{q.id}: unknown relation {q.relation!r}")
        if q.id != f"{fact}-{q.group}" or not fact.startswith(f"{q.relation}-"):
            problems.append(f"{q.id}: id, fact {fact!r} and relation {q.relation!r} do not match")
        by_fact[fact][q.group] = q
    answer_fact: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)  # (relation, lang) -> answer -> fact
    for fact, langs in by_fact.items():
        if sorted(langs) != sorted(LANGUAGES):
            problems.append(f"fact {fact!r} is in {sorted(langs)}, want all of {LANGUAGES}")
        if len({q.relation for q in langs.values()}) != 1:
            problems.append(f"fact {fact!r} has different relations across languages")
        for lang, q in langs.items():
            seen = answer_fact[(q.relation, lang)]
            if q.answer in seen:
                problems.append(f"{q.id}: answer {q.answer!r} is also the answer of {seen[q.answer]!r}")
            seen[q.answer] = fact
    for fact, langs in by_fact.items():
        picks = {}
        for lang, q in langs.items():
            pool = answer_fact[(q.relation, lang)]
            missing = [d for d in q.distractors if d not in pool]
            if missing:
                problems.append(f"{q.id}: distractors {missing} are not answers of the relation {q.relation!r}")
            picks[lang] = sorted(pool.get(d, "?") for d in q.distractors)
        if len({tuple(p) for p in picks.values()}) > 1:
            problems.append(f"fact {fact!r}: distractors are different entities across languages: {picks}")
    return problems


@pytest.fixture(scope="module")
def domain() -> list[Query]:
    """The built-in domain set."""
    return load_builtin("domain")


@pytest.fixture(scope="module")
def language() -> list[Query]:
    """The built-in language set."""
    return load_builtin("language")


def test_builtin_names_and_unknown_name() -> None:
    """The two packaged names load; any other name says which ones exist."""
    assert BUILTIN == ("domain", "language")
    with pytest.raises(QRNError) as err:
        load_builtin("foo")
    assert str(err.value) == "unknown dataset 'foo'; choose one of: domain, language"


@pytest.mark.parametrize("name", BUILTIN)
def test_raw_file_is_one_object_per_line_without_escapes(name: str) -> None:
    """The files are plain JSONL with exactly the documented fields, readable as UTF-8 (no \\u escapes)."""
    text = (resources.files("qrcore.data") / f"{name}.jsonl").read_text(encoding="utf-8")
    keys = {"id", "group", "question", "answer", "distractors"} | (
        {"relation", "fact"} if name == "language" else set()
    )
    lines = text.splitlines()
    assert text.endswith("\n") and all(lines)
    for line in lines:
        assert set(json.loads(line)) == keys, line
    assert "\\u" not in text, "write the JSONL with ensure_ascii=False"


def test_domain_structure(domain: list[Query]) -> None:
    """Unique ids, the 6 domain groups in order, >= 50 queries each, free-form (no ready-made prompts)."""
    assert structure_problems(domain, DOMAIN_GROUPS) == []
    assert groups(domain) == DOMAIN_GROUPS
    assert all(q.id.startswith(f"{q.group}-") and not q.relation and not q.prompts for q in domain)


def test_language_structure(language: list[Query]) -> None:
    """Unique ids, the 6 language groups, >= 50 queries each, the 5 relations."""
    assert structure_problems(language, LANGUAGES) == []
    assert {q.relation for q in language} == RELATIONS


@pytest.mark.parametrize("name", BUILTIN)
def test_every_query_has_four_distinct_options_one_correct(name: str) -> None:
    """Every built-in query can be asked as a 4-option multi-choice question with one right answer."""
    queries = load_builtin(name)
    assert [p for q in queries for p in option_problems(q)] == []
    for q in queries:
        q.validate()


def test_every_fact_in_all_languages(language: list[Query]) -> None:
    """The language set is parallel: same facts, relations and distractor entities in all 6 languages."""
    assert fact_problems(language) == []


def test_each_language_in_its_own_script(language: list[Query]) -> None:
    """Questions and options of each language use only that language's script."""
    assert [p for q in language for p in script_problems(q)] == []


def test_stats(domain: list[Query]) -> None:
    """`dataset_stats` counts queries per group in first-seen order."""
    stats = dataset_stats(domain)
    assert list(stats.columns) == ["group", "n_queries"]
    assert stats["group"].tolist() == DOMAIN_GROUPS
    assert stats["n_queries"].sum() == len(domain)


# The checks above must fail on a wrong line: feed each one broken records.


def _q(language: list[Query], id: str) -> Query:
    """The built-in language query `id`."""
    return next(q for q in language if q.id == id)


@pytest.mark.parametrize(
    ("id", "field", "value", "expected"),
    [
        ("birth_place-001-ru", "answer", "Salzburg", "uses ['latin']"),
        ("birth_place-001-ar", "question", "أين وُلد Mozart؟", "uses ['latin']"),
        ("birth_place-001-zh", "answer", "ザルツブルク", "uses ['kana']"),
        ("birth_place-001-ja", "question", "莫扎特出生在哪里？", "has no hiragana or katakana"),
        ("birth_place-001-en", "answer", "Зальцбург", "uses ['cyrillic']"),
        ("birth_place-001-fr", "distractors", ("Vienne", "Berlin", "Прага"), "uses ['cyrillic']"),
        ("birth_place-001-ar", "answer", "123", "has no letters"),
    ],
)
def test_script_check_reports_wrong_script(
    language: list[Query], id: str, field: str, value: object, expected: str
) -> None:
    """The script check catches a line written in the wrong script."""
    assert script_problems(_q(language, id)) == []
    broken = dataclasses.replace(_q(language, id), **{field: value})
    assert any(expected in p for p in script_problems(broken)), script_problems(broken)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("distractors", ("Oxygen", "Nitrogen"), "3 options, want 4"),
        ("distractors", ("Oxygen", "oxygen ", "Hydrogen"), "not distinct"),
        ("distractors", ("CARBON DIOXIDE", "Nitrogen", "Hydrogen"), "also a distractor"),
        ("distractors", ("Oxygen", "", "Hydrogen"), "option is empty"),
        ("question", "Which gas is carbon dioxide?", "appears in the question"),
        ("question", "Name the gas plants absorb", "question mark"),
    ],
)
def test_option_check_reports_bad_options(domain: list[Query], field: str, value: object, expected: str) -> None:
    """The option check catches too few, repeated, doubly-correct or empty options and leaked answers."""
    broken = dataclasses.replace(domain[0], **{field: value})
    assert any(expected in p for p in option_problems(broken)), option_problems(broken)


def test_answer_leak_uses_whole_words() -> None:
    """Single letters inside words are not leaks; Chinese/Japanese answers are matched without word boundaries."""
    assert answer_leaks("What is 1000 in Roman numerals?", "M") is False
    assert answer_leaks("What is the capital of Japan?", "Japan") is True
    assert answer_leaks("任天堂的总部位于哪个城市？", "任天堂") is True


def test_structure_check_reports_duplicates_small_and_missing_groups(domain: list[Query]) -> None:
    """The structure check catches a repeated id, a group under 50 queries and a missing group."""
    broken = [*domain, domain[0]]
    assert structure_problems(broken, DOMAIN_GROUPS) == ["duplicate id 'biology-001'"]
    few = [q for q in domain if q.group != "physics" or q.id < "physics-010"]
    assert structure_problems(few, DOMAIN_GROUPS) == ["group 'physics' has 9 queries, want >= 50"]
    no_geo = [q for q in domain if q.group != "geography"]
    assert any("groups" in p for p in structure_problems(no_geo, DOMAIN_GROUPS))


def test_fact_check_reports_missing_language_relation_and_distractors(language: list[Query]) -> None:
    """The fact check catches a missing translation, a changed relation and mismatched or foreign distractors."""
    missing = [q for q in language if q.id != "employer-003-zh"]
    assert f"fact 'employer-003' is in {sorted(set(LANGUAGES) - {'zh'})}, want all of {LANGUAGES}" in fact_problems(
        missing
    )

    moved = [dataclasses.replace(q, relation="host_country") if q.id == "employer-003-zh" else q for q in language]
    assert "fact 'employer-003' has different relations across languages" in fact_problems(moved)

    ja = _q(language, "instrument-001-ja")
    swapped = [
        dataclasses.replace(q, distractors=(ja.answer, *q.distractors[1:])) if q.id == "instrument-002-ja" else q
        for q in language
    ]
    assert any("instrument-002" in p and "different entities" in p for p in fact_problems(swapped))

    foreign = [
        dataclasses.replace(q, distractors=("Paris", *q.distractors[1:])) if q.id == "birth_place-001-en" else q
        for q in language
    ]
    assert any("birth_place-001-en: distractors ['Paris']" in p for p in fact_problems(foreign))
