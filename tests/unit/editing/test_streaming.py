"""The streamed generation yields generate's answer piece by piece, and leaves no hook between pieces."""

from __future__ import annotations

import pytest

from qrcore.editing.scaling import generate
from qrcore.editing.streaming import stream

pytestmark = pytest.mark.integration  # token-by-token generation beside generate on two architectures: seconds each


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("edit", [None, {(0, 5): 0.0, (1, 50): 3.0, (3, 7): -1.0}])
def test_stream_joins_to_the_generated_answer(tiny, arch, edit):
    lm = tiny(arch)
    pieces = list(stream(lm, "What is the capital of France?", edit, max_new_tokens=24))
    assert len(pieces) > 1
    assert "".join(pieces) == generate(lm, "What is the capital of France?", edit, max_new_tokens=24)


def test_two_streams_read_in_turns_match_each_alone(tiny):
    lm = tiny("llama")
    edit = {(1, 50): 4.0, (2, 3): 4.0, (3, 7): 4.0}
    plain, edited = stream(lm, "Name a planet.", None, 16), stream(lm, "Name a planet.", edit, 16)
    turns: dict[str, list[str]] = {"plain": [], "edited": []}
    for a, b in zip(plain, edited):  # in turns: an edit's hooks must not reach the other stream's steps
        turns["plain"].append(a)
        turns["edited"].append(b)
    turns["plain"] += list(plain)
    turns["edited"] += list(edited)
    assert "".join(turns["plain"]) == generate(lm, "Name a planet.", None, 16)
    assert "".join(turns["edited"]) == generate(lm, "Name a planet.", edit, 16)
    assert "".join(turns["plain"]) != "".join(turns["edited"])
