"""Matched controls of an edit: random neurons with the edit's layers and count per layer, and the permutation test
of the edit's effect against theirs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qrcore.errors import QRNError

Neuron = tuple[int, int]
ALTERNATIVES = ("less", "greater")
"""The direction an edit is expected to move P(correct): down for a multiplier below 1, up otherwise."""


def direction(multiplier: float) -> str:
    """The one-sided test's direction for an edit of this multiplier: "less" below 1 (suppressing), else "greater"."""
    return "less" if multiplier < 1 else "greater"


def matched_controls(
    neurons: Sequence[Neuron], layer_sizes: Sequence[int], k: int, seed: int = 0
) -> list[list[Neuron]]:
    """k random neuron sets, each with the same count in each layer as `neurons` and none of them; same seed, same
    draws. Each draw lists its neurons layer by layer in the order of sorted(set(neurons))."""
    counts = Counter(layer for layer, _ in set(neurons))
    for layer, count in sorted(counts.items()):
        if not 0 <= layer < len(layer_sizes):
            raise QRNError(f"layer {layer} is out of range; this model has layers 0-{len(layer_sizes) - 1}.")
        if layer_sizes[layer] - count < count:
            raise QRNError(
                f"layer {layer} has {layer_sizes[layer]} neurons and the edit uses {count}, so no control of {count} "
                "other neurons of that layer exists; edit fewer neurons of it."
            )
    rng = np.random.default_rng(seed)
    draws: list[list[Neuron]] = [[] for _ in range(k)]
    for layer, count in sorted(counts.items()):
        free = np.setdiff1d(np.arange(layer_sizes[layer]), [n for l, n in neurons if l == layer])  # (free,)
        picks = rng.random((k, len(free))).argsort(axis=1)[:, :count]  # (k, count) distinct per draw
        for draw, row in zip(draws, free[picks]):
            draw += [(layer, int(n)) for n in row]
    return draws


@dataclass(frozen=True, eq=False)
class ControlTest:
    """An edit's effect beside the same effect of k matched random controls: the one-sided permutation p-value
    p = (1 + #{controls at least as extreme}) / (1 + k) and the controls' central percentile interval."""

    effect: float
    controls: np.ndarray = field(repr=False)
    """(k,) each control's effect."""
    alternative: str
    p_value: float
    low: float
    high: float
    level: float
    """The share of the controls' distribution between low and high (percentiles)."""

    def __post_init__(self) -> None:
        k = len(self.controls)
        if self.controls.ndim != 1 or k < 1 or not np.isfinite(self.controls).all() or not np.isfinite(self.effect):
            raise ValueError("a control test needs a finite effect and at least one finite control effect")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"alternative {self.alternative!r} is not one of {ALTERNATIVES}")
        if not 1 / (k + 1) - 1e-12 <= self.p_value <= 1 or not 0 < self.level < 1 or not self.low <= self.high:
            raise ValueError("p-value, level or interval out of range")

    @property
    def k(self) -> int:
        """The number of control draws."""
        return len(self.controls)

    @property
    def control_mean(self) -> float:
        """The controls' mean effect."""
        return float(self.controls.mean())


def control_test(effect: float, controls: Sequence[float], alternative: str, level: float = 0.95) -> ControlTest:
    """The edit's `effect` tested against the `controls` effects: "less" counts controls <= effect (a suppression
    expected to lower P), "greater" controls >= effect."""
    values = np.asarray(controls, np.float64)  # (k,)
    extreme = values <= effect if alternative == "less" else values >= effect  # (k,)
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return ControlTest(
        float(effect), values, alternative, (1 + int(extreme.sum())) / (1 + len(values)), float(low), float(high), level
    )
