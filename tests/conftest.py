"""Shared fixtures: the default model's tokenizer (offline) and tiny seeded models of each architecture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qrcore.models import DEFAULT_MODEL, embedded_folder

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("QRN_CACHE", str(REPO / "cache"))


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer (with chat template), from the cached conversion of the embedded default model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_folder(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """tiny(arch) -> a LoadedModel of that architecture, built once per session from a seeded config."""
    from qrcore.tiny import tiny_model

    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = tiny_model(arch, tokenizer)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (slow tests only)."""
    from qrcore.models import load_model

    return load_model()


