"""Edits and neuron sets as files a user can take away: JSON or CSV, tied to a model by its fingerprint.

An edit file lists neurons with the multiplier of their activation (0 suppresses, 2 boosts); a neuron-set file lists
neurons found by QRNCA (a query's or a group's QR neurons, the common neurons) with their score. Both load back with
`load_edit`, which gives a mapping that `qrcore.editing.scaling.edited` applies:

    with edited(lm, load_edit("edit.json")):
        ...
    with edited(lm, load_edit("qr-neurons.csv", multiplier=0.0)):  # a neuron set, suppressed
        ...

`edited` refuses an edit made for another model (its fingerprint differs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
import io
import json
import math
import os
from pathlib import Path

import pandas as pd

from qrcore.errors import QRNError

EDIT, NEURON_SET = "qrn-edit", "qrn-neurons"
"""The `format` of an edit file and of a neuron-set file."""
VERSION = 1
VALUE = {EDIT: "multiplier", NEURON_SET: "score"}
"""The per-neuron number each kind of file carries."""
META = {EDIT: ("model", "model_fingerprint"), NEURON_SET: ("model", "model_fingerprint", "run", "set")}
"""The file-level fields of each kind (CSV files repeat them on every row)."""
MAX_INDEX = 2**31 - 1
"""Above any model's layer or neuron count, and a whole number that int() keeps exactly."""

Neuron = tuple[int, int]


@dataclass(frozen=True)
class EditFile(Mapping[Neuron, float]):
    """A loaded edit: (layer, neuron) -> multiplier, with the model it was made for."""

    model: str
    fingerprint: str
    multipliers: dict[Neuron, float] = field(default_factory=dict)

    def __getitem__(self, neuron: Neuron) -> float:
        return self.multipliers[neuron]

    def __iter__(self) -> Iterator[Neuron]:
        return iter(self.multipliers)

    def __len__(self) -> int:
        return len(self.multipliers)


def check_model(edit: Mapping[Neuron, float], fingerprint: str, model: str) -> None:
    """QRNError if `edit` is an EditFile made for a model other than the one with this fingerprint (named `model`)."""
    if isinstance(edit, EditFile) and edit.fingerprint != fingerprint:
        raise QRNError(
            f"the edit was made for model {edit.model} (fingerprint {edit.fingerprint}), not for {model} "
            f"(fingerprint {fingerprint}); load it with the model it was made for."
        )


def dump(kind: str, meta: Mapping[str, str], neurons: pd.DataFrame, fmt: str) -> str:
    """The file text ("json" or "csv") of an edit or neuron set: `meta` holds META[kind], `neurons` layer, neuron and
    VALUE[kind]."""
    table = neurons[["layer", "neuron", VALUE[kind]]].astype({"layer": int, "neuron": int, VALUE[kind]: float})
    fields = {key: str(meta[key]) for key in META[kind]}
    if fmt == "json":
        return json.dumps(
            {"format": kind, "version": VERSION, **fields, "neurons": table.to_dict("records")},
            indent=1,
            ensure_ascii=False,
        )
    return table.assign(**fields)[[*META[kind], "layer", "neuron", VALUE[kind]]].to_csv(index=False)


def parse(text: str, source: str) -> tuple[str, dict[str, str], pd.DataFrame]:
    """(kind, meta, neurons) of an edit or neuron-set file's text; one-line QRNError naming what is wrong in `source`."""
    where = f"{source}:"
    try:
        kind, meta, table = _parse_json(text) if text.lstrip().startswith("{") else _parse_csv(text)
    except (ValueError, KeyError, TypeError) as err:
        raise QRNError(f"{where} {err}; export the file again from the explorer.") from None
    for key in META[kind]:
        if not meta.get(key):
            raise QRNError(f"{where} the field {key!r} is missing; export the file again from the explorer.")
    try:
        if table[["layer", "neuron"]].map(lambda v: isinstance(v, bool)).any(axis=None):
            raise ValueError("a layer or neuron is true or false")
        layers, neurons = table["layer"].astype(float), table["neuron"].astype(float)
        values = table[VALUE[kind]].astype(float)
        if layers.isna().any() or neurons.isna().any():
            raise ValueError("a layer or neuron is missing")
    except (KeyError, ValueError, TypeError):
        raise QRNError(
            f"{where} every neuron needs numbers layer, neuron and {VALUE[kind]}; "
            "export the file again from the explorer."
        ) from None
    bad = ~(layers.between(0, MAX_INDEX) & neurons.between(0, MAX_INDEX) & (layers % 1 == 0) & (neurons % 1 == 0))
    if bad.any():
        raise QRNError(
            f"{where} neuron {_first(table, bad)} is not a layer and index (whole numbers from 0 to {MAX_INDEX}); "
            "correct or remove it."
        )
    frame = pd.DataFrame({"layer": layers.astype(int), "neuron": neurons.astype(int), VALUE[kind]: values})
    wrong = ~values.between(0, math.inf, inclusive="left")  # NaN and infinity too
    if kind == EDIT and wrong.any():
        raise QRNError(
            f"{where} neuron {_first(frame, wrong)} has multiplier {values[wrong].iloc[0]:g}; "
            "multipliers are finite numbers from 0 (0 suppresses, 1 leaves, 2 boosts)."
        )
    twice = frame.duplicated(["layer", "neuron"])
    if twice.any():
        raise QRNError(f"{where} neuron {_first(frame, twice)} appears twice; keep one line per neuron.")
    return kind, meta, frame


def to_edit(
    kind: str, meta: Mapping[str, str], neurons: pd.DataFrame, multiplier: float | None, source: str
) -> EditFile:
    """The EditFile of a parsed file: an edit's own multipliers, or every neuron of a neuron set times `multiplier`."""
    if kind == NEURON_SET and multiplier is None:
        raise QRNError(
            f"{source} is a neuron set, not an edit; give the multiplier to apply to its neurons "
            "(0 suppresses, 2 boosts)."
        )
    if multiplier is not None and not 0 <= multiplier < math.inf:
        raise QRNError(f"multiplier {multiplier} is not a finite number from 0; use 0 to suppress, 2 to boost.")
    values = neurons["multiplier"] if multiplier is None else [float(multiplier)] * len(neurons)
    return EditFile(
        meta["model"],
        meta["model_fingerprint"],
        {(int(l), int(n)): float(m) for l, n, m in zip(neurons["layer"], neurons["neuron"], values)},
    )


def load_edit(path: str | os.PathLike, multiplier: float | None = None) -> EditFile:
    """An edit file (JSON or CSV, from the explorer's query lab) to apply with `qrcore.editing.scaling.edited`.

    A neuron-set file (from the explorer's export page) loads too, with every neuron scaled by `multiplier`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise QRNError(f"cannot read {path} ({err.__class__.__name__}); pass the path of an exported file.") from None
    return to_edit(*parse(text, path.name), multiplier, path.name)


def _first(table: pd.DataFrame, mask: pd.Series) -> str:
    """'layer:neuron' of the first row of `table` where `mask` holds, as written."""
    return f"{table['layer'][mask].iloc[0]}:{table['neuron'][mask].iloc[0]}"


def _parse_json(text: str) -> tuple[str, dict[str, str], pd.DataFrame]:
    """(kind, meta, raw neuron table) of a JSON file; ValueError or KeyError naming what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or data.get("format") not in META:
        raise ValueError(f"not an edit or neuron-set file (its format is not {EDIT!r} or {NEURON_SET!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"file version {data.get('version')!r}; this qrn reads version {VERSION}")
    rows = data.get("neurons")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("'neurons' is not a list of {layer, neuron, ...} objects")
    return (
        data["format"],
        {k: str(v) for k, v in data.items() if k in META[data["format"]] and v is not None},
        pd.DataFrame(rows, columns=["layer", "neuron", VALUE[data["format"]]]),
    )


def _parse_csv(text: str) -> tuple[str, dict[str, str], pd.DataFrame]:
    """(kind, meta, raw neuron table) of a CSV file, told apart by its columns; ValueError naming what is wrong."""
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"not a readable CSV file ({str(err).splitlines()[0]})") from None
    kind = next((k for k in (EDIT, NEURON_SET) if {*META[k], "layer", "neuron", VALUE[k]} <= set(table.columns)), None)
    if kind is None:
        raise ValueError(
            f"not an edit or neuron-set CSV (columns {', '.join(META[EDIT])}, layer, neuron, multiplier or score)"
        )
    meta = {}
    for key in META[kind]:
        values = set(table[key])
        if len(values) > 1:
            raise ValueError(f"the column {key!r} differs between rows; one file holds one {key}")
        meta[key] = values.pop() if values else ""
    return kind, meta, table
