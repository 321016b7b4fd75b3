"""Result records passed from the engine to the store and the explorer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QueryAttribution:
    """Neuron attribution of one query, summed over its prompt templates (paper Eq. 5)."""

    query_id: str
    na: np.ndarray
    """float32 (layers, neurons): NA, the IG scores summed over templates and divided by Z = max |score|."""
    activation: np.ndarray
    """float32 (layers, neurons): the attributed activation f at the answer position, mean over templates."""
    correct_prob: float
    """Probability of the correct letter token, mean over templates."""
    accuracy: float
    """Share of templates where the correct letter has the highest probability among the option letters."""
    seconds: float = 0.0
    """Wall time the attribution took."""
