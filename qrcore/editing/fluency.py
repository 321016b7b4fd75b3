"""Fluency (EasyEdit's name): free-form generation before and after an edit, scored by n-gram entropy, which falls
when an edit makes the model repeat itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
import math
import re

from qrcore.editing.scaling import Edit, generate
from qrcore.model.spec import LoadedModel

TOKEN = re.compile(r"\w+|[^\w\s]")
"""Words and single punctuation marks: nltk's word_tokenize, which EasyEdit uses, without nltk."""


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """EasyEdit's n-gram entropy: the mean over n of weight_n x the entropy in bits of the text's n-gram frequencies
    (0 for a text too short for any n-gram)."""
    tokens = TOKEN.findall(text)
    entropies = []
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        entropies.append(weight * -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return sum(entropies) / len(entropies)


@dataclass(frozen=True)
class Fluency:
    """The model's greedy free-form answer to a question before and after an edit, with each one's n-gram entropy."""

    question: str
    before: str
    after: str
    entropy_before: float
    entropy_after: float

    def __post_init__(self) -> None:
        if not (self.entropy_before >= 0 and self.entropy_after >= 0):
            raise ValueError("n-gram entropies are at least 0")


def fluency(lm: LoadedModel, question: str, edit: Edit, max_new_tokens: int = 48) -> Fluency:
    """Greedy generation of the plain question unedited and under `edit`, same decoding settings (`generate`)."""
    before, after = generate(lm, question, None, max_new_tokens), generate(lm, question, edit, max_new_tokens)
    return Fluency(question, before, after, ngram_entropy(before), ngram_entropy(after))
