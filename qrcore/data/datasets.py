"""Datasets: load the built-in query sets and import user files (paper JSON, MMLU-style CSV) as `list[Query]`."""

from __future__ import annotations

from collections.abc import Iterable
import csv
from importlib import resources
import io
import json
from pathlib import Path
import re
from typing import Any

import pandas as pd

from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.names import check_name

BUILTIN = ("domain", "language")
"""Names of the packaged datasets (qrcore/data/<name>.jsonl)."""

CSV_COLUMNS = ("question", "A", "B", "C", "D", "answer")
"""Required header of an MMLU-style CSV file; `group` (or `subject`) is optional."""

_LETTER = re.compile(r"[A-Z]")
_PAPER_KEYS = ("sentences", "obj_label", "relation_name")
_JSONL_KEYS = ("id", "group", "question", "answer", "distractors")


class _Object(dict):
    """A parsed JSON object that remembers its repeated keys, which `json` would otherwise drop without a word."""

    repeated: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _Object:
    """`object_pairs_hook` for json: the object as a dict, with its repeated keys noted for the caller to report."""
    obj = _Object(pairs)
    obj.repeated = []
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            obj.repeated.append(key)
        seen.add(key)
    return obj


def load_builtin(name: str) -> list[Query]:
    """The packaged dataset `name` (domain or language), validated, in file order."""
    if name not in BUILTIN:
        raise QRNError(f"unknown dataset {name!r}; choose one of: {', '.join(BUILTIN)}")
    text = (resources.files("qrcore.data") / f"{name}.jsonl").read_text(encoding="utf-8")
    return _parse_jsonl(text, f"{name}.jsonl")


def import_file(path: str | Path, name: str | None = None) -> list[Query]:
    """Queries from a paper-format .json or an MMLU-style .csv file; all-or-nothing, one-line QRNError if malformed.

    `name` (default: the file stem) is the dataset's name (`qrcore.names`), the group of a CSV without a group column
    and the prefix of its ids.
    """
    path = Path(path)
    check_name(
        path.stem if name is None else name,
        "dataset name",
        "give another with qrn import FILE --name NAME (a file's default name is its name without the extension)",
    )
    file = path.name
    ext = path.suffix.lower()
    if ext not in (".json", ".csv"):
        raise QRNError(
            f"{file}: unknown extension {ext or '(none)'!r}; "
            "give a .json file (the paper's format) or a .csv file (MMLU-style)."
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise QRNError(f"{file}: no such file {str(path)!r}; check the path.") from None
    except UnicodeDecodeError:
        raise QRNError(f"{file}: not UTF-8 text; save it as UTF-8.") from None
    if ext == ".json":
        return _parse_paper_json(text, file)
    return _parse_csv(text, file, name or path.stem)


def groups(queries: Iterable[Query]) -> list[str]:
    """The distinct groups of `queries` in first-seen order (the order of heatmap rows and clusters)."""
    return list(dict.fromkeys(q.group for q in queries))


def dataset_stats(queries: Iterable[Query]) -> pd.DataFrame:
    """One row per group (first-seen order) with its number of queries, for summaries in the CLI and explorer."""
    counts: dict[str, int] = {}
    for q in queries:
        counts[q.group] = counts.get(q.group, 0) + 1
    return pd.DataFrame({"group": list(counts), "n_queries": list(counts.values())})


def _checked(query: Query, file: str, record: str) -> Query:
    """`query` after `Query.validate()`, with any error prefixed by the file and record it came from."""
    try:
        query.validate()
    except QRNError as err:
        raise QRNError(f"{file}: {record}: {err}") from None
    return query


def _finish(queries: list[Query], file: str) -> list[Query]:
    """`queries` if the file held at least one record; an empty dataset is an error, not a silent no-op."""
    if not queries:
        raise QRNError(f"{file}: no records; add at least one query.")
    return queries


def _parse_jsonl(text: str, file: str) -> list[Query]:
    """Queries from the built-in JSONL format: one object per line with id, group, question, answer, distractors."""
    queries: list[Query] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise QRNError(f"{file}: {where}: not valid JSON ({err.msg}); write one JSON object per line.") from None
        if not isinstance(obj, dict):
            raise QRNError(f"{file}: {where}: not a JSON object; write one JSON object per line.")
        for key in _JSONL_KEYS:
            if key not in obj:
                raise QRNError(f"{file}: {where}: field {key!r} is missing; add it.")
        for key in ("id", "group", "question", "answer"):
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise QRNError(f"{file}: {where}: field {key!r} must be a non-empty string; fill it in.")
        dis = obj["distractors"]
        if not isinstance(dis, list) or not all(isinstance(d, str) for d in dis):
            raise QRNError(f"{file}: {where}: field 'distractors' must be a list of strings; fix it.")
        if obj["id"] in seen:
            raise QRNError(f"{file}: {where}: duplicate id {obj['id']!r}; ids must be unique.")
        seen.add(obj["id"])
        extra = {k: v for k, v in obj.items() if k not in _JSONL_KEYS and k != "relation"}
        queries.append(
            _checked(
                Query(
                    id=obj["id"],
                    group=obj["group"],
                    question=obj["question"],
                    answer=obj["answer"],
                    distractors=tuple(dis),
                    relation=str(obj.get("relation", "")),
                    meta=extra,
                ),
                file,
                where,
            )
        )
    return _finish(queries, file)


def _parse_paper_json(text: str, file: str) -> list[Query]:
    """Queries from the paper's released JSON: {id: {"sentences": [...], "obj_label": [...], "relation_name": g}}."""
    try:
        top = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as err:
        raise QRNError(
            f"{file}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "fix the syntax or export the file again."
        ) from None
    if not isinstance(top, _Object):
        raise QRNError(
            f'{file}: not a JSON object; expected {{id: {{"sentences": [...], '
            '"obj_label": [...], "relation_name": ...}}.'
        )
    if top.repeated:
        raise QRNError(f"{file}: record {top.repeated[0]!r}: duplicate id; ids must be unique.")
    queries: list[Query] = []
    for rid, rec in top.items():
        where = f"record {rid!r}"
        if not isinstance(rec, _Object):
            raise QRNError(f"{file}: {where}: not a JSON object; give sentences, obj_label and relation_name.")
        if rec.repeated:
            raise QRNError(f"{file}: {where}: field {rec.repeated[0]!r} appears twice; keep one.")
        for key in _PAPER_KEYS:
            if key not in rec:
                raise QRNError(f"{file}: {where}: field {key!r} is missing; add it.")
        sentences, labels, group = rec["sentences"], rec["obj_label"], rec["relation_name"]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise QRNError(f"{file}: {where}: field 'sentences' must be a non-empty list of strings; give the prompts.")
        empty = next((i for i, s in enumerate(sentences, start=1) if not s.strip()), None)
        if empty is not None:
            raise QRNError(f"{file}: {where}: field 'sentences' item {empty} is empty; remove it or write the prompt.")
        if not isinstance(labels, list):
            raise QRNError(
                f"{file}: {where}: field 'obj_label' must be a list of letters; give one letter per sentence."
            )
        if len(labels) != len(sentences):
            raise QRNError(
                f"{file}: {where}: field 'obj_label' has {len(labels)} labels for {len(sentences)} "
                "sentences; give one letter per sentence."
            )
        bad = next(
            (i for i, lab in enumerate(labels, start=1) if not isinstance(lab, str) or not _LETTER.fullmatch(lab)), None
        )
        if bad is not None:
            raise QRNError(
                f"{file}: {where}: field 'obj_label' item {bad} is {labels[bad - 1]!r}; "
                "give a single capital letter A-Z."
            )
        if not isinstance(group, str) or not group.strip():
            raise QRNError(f"{file}: {where}: field 'relation_name' must be a non-empty string; give the group name.")
        answer = rec.get("ori_label")
        relation = rec.get("relation")
        extra = {k: v for k, v in rec.items() if k not in (*_PAPER_KEYS, "ori_label", "relation")}
        queries.append(
            _checked(
                Query(
                    id=rid,
                    group=group,
                    question=sentences[0],
                    prompts=tuple(sentences),
                    labels=tuple(labels),
                    answer="" if answer is None else str(answer),
                    relation="" if relation is None else str(relation),
                    meta=extra,
                ),
                file,
                where,
            )
        )
    return _finish(queries, file)


def _parse_csv(text: str, file: str, name: str) -> list[Query]:
    """Queries from an MMLU-style CSV with header question,A,B,C,D,answer[,group|subject]; ids are `<name>-<line>`."""
    if not text.strip():
        raise QRNError(f"{file}: no records; add a header line and at least one query.")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        header = next(reader)
        start = reader.line_num + 1
        for fields in reader:
            rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        raise QRNError(f"{file}: line {reader.line_num}: not valid CSV ({err}); fix the quoting.") from None
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise QRNError(
            f"{file}: line 1: column {missing[0]!r} is missing; the first line must be a header with "
            f"columns {', '.join(CSV_COLUMNS)} (and optionally group)."
        )
    twice = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if twice is not None:
        raise QRNError(f"{file}: line 1: column {twice!r} appears twice in the header; keep one.")
    group_col = next((c for c in ("group", "subject") if c in header), None)
    queries: list[Query] = []
    for lineno, fields in rows:
        if not fields:
            continue
        where = f"line {lineno}"
        if len(fields) != len(header):
            raise QRNError(
                f"{file}: {where}: {len(fields)} fields but the header has {len(header)}; "
                "give every column a value and quote values that contain commas."
            )
        row = dict(zip(header, fields))
        for col in ("question", "A", "B", "C", "D", *((group_col,) if group_col else ())):
            if not row[col].strip():
                raise QRNError(f"{file}: {where}: field {col!r} is empty; fill it in.")
        letter = row["answer"].strip().upper()
        if letter not in ("A", "B", "C", "D"):
            raise QRNError(f"{file}: {where}: field 'answer' is {row['answer']!r}; give one of the letters A, B, C, D.")
        options = [row[c].strip() for c in ("A", "B", "C", "D")]
        answer = options.pop("ABCD".index(letter))
        group = row[group_col].strip() if group_col else name
        queries.append(
            _checked(
                Query(
                    id=f"{name}-{lineno}",
                    group=group,
                    question=row["question"].strip(),
                    answer=answer,
                    distractors=tuple(options),
                ),
                file,
                where,
            )
        )
    return _finish(queries, file)
