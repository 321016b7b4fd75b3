"""The evaluation checkpoint: a round trip, and nothing from another evaluation's or a damaged file."""

from __future__ import annotations

import numpy as np

from qrcore.evaluation.checkpoint import EvaluationCheckpoint


def test_round_trip_beside_the_store(tmp_path):
    checkpoint = EvaluationCheckpoint.of(tmp_path / "qrn.duckdb", "abc123", 0, ["q1", "q2"])
    assert checkpoint.path == tmp_path / ".qrn.duckdb.evaluating-abc123.npz"
    assert checkpoint.load() == {}
    probs = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    checkpoint.save({"q1": probs})
    loaded = checkpoint.load()
    assert list(loaded) == ["q1"] and np.array_equal(loaded["q1"], probs)
    checkpoint.remove()
    assert not checkpoint.path.exists() and checkpoint.load() == {}


def test_another_evaluations_or_a_damaged_file_gives_nothing(tmp_path):
    db = tmp_path / "qrn.duckdb"
    EvaluationCheckpoint.of(db, "abc123", 0).save({"q1": np.ones(3)})
    assert EvaluationCheckpoint.of(db, "abc123", 1).load() == {}  # another seed: other controls
    assert len(EvaluationCheckpoint.of(db, "abc123", 0).load()) == 1
    EvaluationCheckpoint.of(db, "abc123", 0).path.write_bytes(b"PK\x03\x04 cut off")
    assert EvaluationCheckpoint.of(db, "abc123", 0).load() == {}
