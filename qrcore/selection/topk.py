"""Top neurons of a (layers, neurons) score matrix, as (layer, neuron, score) triples."""

from __future__ import annotations

import numpy as np


def top_neurons(scores: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The k highest-scoring neurons of a (layers, neurons) array, best first."""
    flat = scores.reshape(-1)
    k = min(k, flat.size)
    idx = np.argpartition(-flat, k - 1)[:k]
    idx = idx[np.argsort(-flat[idx], kind="stable")]
    layers, neurons = np.unravel_index(idx, scores.shape)
    return [(int(l), int(n), float(flat[i])) for l, n, i in zip(layers, neurons, idx)]
