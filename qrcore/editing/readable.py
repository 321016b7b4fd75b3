"""Probabilities people can read: the option letters' probabilities renormalised over the options, beside their raw
share of the whole vocabulary (which, on a model that spreads mass over other tokens, adds up to well under 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qrcore.data.prompts import ChoicePrompt


def renormalise(raw: np.ndarray) -> np.ndarray:
    """(..., options) each option's probability over the options only: raw / its sum over the options; NaN padding
    (prompts with fewer options) stays NaN."""
    raw = np.asarray(raw, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return raw / np.nansum(raw, axis=-1, keepdims=True)  # (..., options)


def correct_share(raw: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(..., prompts) the correct letter's renormalised probability, from raw (..., prompts, options) letter
    probabilities and (prompts,) correct option indices."""
    probs = renormalise(raw)  # (..., prompts, options)
    return np.take_along_axis(probs, np.broadcast_to(correct[:, None], probs.shape[:-1] + (1,)), axis=-1)[..., 0]


def answered_right(raw: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(..., prompts) whether the most probable option is the correct one (ties to the first option)."""
    probs = np.where(np.isnan(raw), -np.inf, raw)  # (..., prompts, options)
    return probs.argmax(axis=-1) == correct


def margin(raw: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """(..., prompts) renormalised P(correct) minus the largest other option's: above 0 where the answer is right."""
    probs = np.nan_to_num(renormalise(raw), nan=-np.inf)  # (..., prompts, options)
    others = probs.copy()
    np.put_along_axis(others, np.broadcast_to(correct[:, None], probs.shape[:-1] + (1,)), -np.inf, axis=-1)
    return correct_share(raw, correct) - others.max(axis=-1)


@dataclass(frozen=True)
class OptionProbs:
    """One prompt's option letters: each one's probability renormalised over the options, beside its raw share of
    the whole vocabulary."""

    letters: tuple[str, ...]
    options: tuple[str, ...]
    """Option texts in display order (empty strings for ready-made prompts)."""
    correct: int
    probability: tuple[float, ...]
    """Renormalised over the options: they sum to 1."""
    vocabulary_share: tuple[float, ...]
    """The letter token's probability among the whole vocabulary (softmax over every token)."""

    def __post_init__(self) -> None:
        n = len(self.letters)
        if not (len(self.options) == len(self.probability) == len(self.vocabulary_share) == n) or n < 2:
            raise ValueError("letters, options and both probabilities need one entry per option (at least two)")
        if not 0 <= self.correct < n:
            raise ValueError(f"correct option {self.correct} is not one of the {n} options")
        if abs(sum(self.probability) - 1) > 1e-6 or not all(0 <= p <= 1 for p in self.probability):
            raise ValueError("renormalised probabilities must lie in [0, 1] and sum to 1")
        if not all(0 <= s <= p + 1e-9 for s, p in zip(self.vocabulary_share, self.probability)):
            raise ValueError("a raw vocabulary share lies in [0, 1] and below its renormalised probability")

    @classmethod
    def of(cls, prompt: ChoicePrompt, raw: np.ndarray) -> OptionProbs:
        """From a prompt and its row of `letter_probs` (options,), NaN padding dropped."""
        raw = np.asarray(raw, np.float64)[: len(prompt.letters)]  # (options,)
        return cls(
            prompt.letters,
            prompt.options or ("",) * len(prompt.letters),
            prompt.correct,
            tuple(map(float, renormalise(raw))),
            tuple(map(float, raw)),
        )

    @property
    def options_share(self) -> float:
        """The share of the vocabulary's probability that the option letters hold together."""
        return float(sum(self.vocabulary_share))

    def table(self) -> pd.DataFrame:
        """One row per option: letter, option, correct, probability (over the options), vocabulary_share (raw)."""
        return pd.DataFrame(
            {
                "letter": self.letters,
                "option": self.options,
                "correct": [i == self.correct for i in range(len(self.letters))],
                "probability": self.probability,
                "vocabulary_share": self.vocabulary_share,
            }
        )
