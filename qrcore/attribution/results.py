"""Result records passed from the engine to the store and the explorer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QueryAttribution:
    """Neuron attribution of one query: its prompt templates' IG scores and what the model answered (paper Eq. 5)."""

    query_id: str
    ig: np.ndarray
    """float32 (templates, layers, neurons): each template's IG scores (Eq. 5 before summation and Z).

    `qrcore.selection.qrnca.query_na` turns them into NA and the coarse cluster under a run's QRNCA settings."""
    activation: np.ndarray
    """float32 (layers, neurons): the attributed activation f at the answer position, mean over templates."""
    correct_prob: float
    """Probability of the correct letter token, mean over templates."""
    accuracy: float
    """Share of templates where the correct letter has the highest probability among the option letters."""
    seconds: float = 0.0
    """Wall time the attribution took."""


@dataclass(frozen=True)
class PartialAttribution:
    """A query's attribution while it is computed layer block by layer block from the top down."""

    attribution: QueryAttribution
    """The IG so far: layers outside `layers` are 0 until their block is done."""
    layers: range
    """The layers attributed so far (from some layer up to the last)."""

    @property
    def complete(self) -> bool:
        """Whether every layer is attributed (the result equals `NeuronAttribution.attribute`)."""
        return self.layers.start == 0

    def __post_init__(self) -> None:
        if self.layers.stop != self.attribution.ig.shape[1] or not 0 <= self.layers.start < self.layers.stop:
            raise ValueError(f"layers {self.layers} are not a top block of {self.attribution.ig.shape[1]} layers")
