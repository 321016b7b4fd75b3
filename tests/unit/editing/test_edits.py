"""Edit and neuron-set files: JSON and CSV round trips, one-line messages for bad files, applying them to a model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qrcore.attribution.ig import NeuronAttribution
from qrcore.editing import edits
from qrcore.editing.scaling import edited, letter_probs
from qrcore.errors import QRNError
from seeded_store import QUERIES

EDIT = {(0, 3): 0.0, (2, 40): 2.5, (3, 95): 1.0}
SET = pd.DataFrame({"layer": [1, 3], "neuron": [50, 7], "score": [0.8, 0.25]})


def write(tmp_path, text: str, name: str = "edit.json"):
    """The text as a file under tmp_path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def edit_text(fmt: str, fingerprint: str = "f00d", edit=EDIT) -> str:
    """An edit file's text."""
    table = pd.DataFrame([(l, n, m) for (l, n), m in edit.items()], columns=["layer", "neuron", "multiplier"])
    return edits.dump(edits.EDIT, {"model": "tiny-llama", "model_fingerprint": fingerprint}, table, fmt)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_edit_file_round_trip(tmp_path, fmt):
    loaded = edits.load_edit(write(tmp_path, edit_text(fmt), f"edit.{fmt}"))
    assert dict(loaded) == EDIT and (loaded.model, loaded.fingerprint) == ("tiny-llama", "f00d")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_neuron_set_loads_as_an_edit_with_a_multiplier(tmp_path, fmt):
    meta = {"model": "tiny-llama", "model_fingerprint": "f00d", "run": "tiny-run", "set": "common neurons"}
    path = write(tmp_path, edits.dump(edits.NEURON_SET, meta, SET, fmt), f"set.{fmt}")
    assert dict(edits.load_edit(path, multiplier=0.0)) == {(1, 50): 0.0, (3, 7): 0.0}
    with pytest.raises(QRNError, match=r"^set\.\w+ is a neuron set, not an edit; give the multiplier"):
        edits.load_edit(path)
    kind, got_meta, table = edits.parse(path.read_text(), path.name)
    assert kind == edits.NEURON_SET and got_meta == meta
    pd.testing.assert_frame_equal(table, SET, check_dtype=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"^edit\.json: not valid JSON \(.* at line 1\); export the file again from the explorer\.$"),
        ('{"format": "x", "neurons": []}', r"^edit\.json: not an edit or neuron-set file"),
        ('{"format": "qrn-edit", "version": 7, "neurons": []}', r"file version 7; this qrn reads version 1"),
        (
            '{"format": "qrn-edit", "version": 1, "model": "m", "neurons": []}',
            r"the field 'model_fingerprint' is missing",
        ),
        (
            '{"format": "qrn-edit", "version": 1, "model": "m", "model_fingerprint": "f", "neurons": 3}',
            r"'neurons' is not a list",
        ),
        (
            '{"format": "qrn-edit", "version": 1, "model": "m", "model_fingerprint": "f", "neurons": [{"layer": 1}]}',
            r"every neuron needs numbers layer, neuron and multiplier",
        ),
        (
            edit_text("json", edit={(1, 2): -1.0}),
            r"neuron 1:2 has multiplier -1; multipliers are finite numbers from 0",
        ),
        (edit_text("json").replace('"layer": 2,', '"layer": 1.5,'), r"neuron 1.5:40 is not a layer and index"),
        (
            edit_text("json").replace('"layer": 2,', '"layer": 0,').replace('"neuron": 40,', '"neuron": 3,'),
            r"neuron 0:3 appears twice",
        ),
        ("a,b\n1,2\n", r"not an edit or neuron-set CSV"),
        (edit_text("csv").replace("tiny-llama,f00d,2", "other,f00d,2"), r"the column 'model' differs between rows"),
    ],
)
def test_malformed_edit_file_gets_one_line(tmp_path, text, message):
    with pytest.raises(QRNError, match=message):
        edits.load_edit(write(tmp_path, text))


def test_unreadable_path_gets_one_line(tmp_path):
    with pytest.raises(QRNError, match=r"^cannot read .*missing\.json \(FileNotFoundError\); pass the path"):
        edits.load_edit(tmp_path / "missing.json")


def test_loaded_edit_applies_like_the_same_dict_and_refuses_another_model(tmp_path, tiny):
    lm = tiny("llama")
    prompts = NeuronAttribution(lm).prompts(QUERIES[0])
    loaded = edits.load_edit(write(tmp_path, edit_text("csv", lm.fingerprint), "edit.csv"))
    np.testing.assert_array_equal(letter_probs(lm, prompts, loaded), letter_probs(lm, prompts, EDIT))
    assert not np.allclose(letter_probs(lm, prompts, loaded), letter_probs(lm, prompts))
    other = edits.load_edit(write(tmp_path, edit_text("json", "beef"), "other.json"))
    with pytest.raises(
        QRNError,
        match=rf"^the edit was made for model tiny-llama \(fingerprint beef\), not for "
        rf"tiny-llama \(fingerprint {lm.fingerprint}\); load it with the model",
    ):
        with edited(lm, other):
            pass
