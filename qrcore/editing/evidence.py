"""Evidence that an edit is real (issue 25): the edit's effect on P(correct) beside matched random controls.

Names follow knowledge-editing work (EasyEdit) and the paper: reliability, generalization and locality are
`MEASURES`; an edit scales the activation f of a set of FFN neurons (a query's QR neurons, a group's, a baseline's) at
the answer position. Every probability here is the correct letter's renormalised over the options
(`qrcore.editing.readable`). All edits of one result (the edit, its controls, a sweep's points, each neuron alone)
are packed rows of few forwards (`qrcore.editing.packing`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import math

import numpy as np
import pandas as pd

from qrcore.attribution.prefixes import PromptStem
from qrcore.data.prompts import ChoicePrompt
from qrcore.editing.controls import ControlTest, Neuron, control_test, direction, matched_controls
from qrcore.editing.fluency import Fluency
from qrcore.editing.packing import MAX_ELEMENTS, probs_under_edits
from qrcore.editing.readable import answered_right, correct_share, margin
from qrcore.editing.scaling import Edit
from qrcore.errors import QRNError
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress

MEASURES = {
    "reliability": "the edited query itself, asked as the run asked it (its templates)",
    "generalization": "the same fact asked otherwise: its options in other orders, paraphrased questions",
    "locality (same group)": "other queries of the query's group, a sample",
    "locality (other groups)": "queries of other groups, a sample",
}
"""The scorecard's measures of a query edit and what each means."""
SWEEP = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
"""The dose-response multipliers: negative values flip f's sign, 0 suppresses, 1 leaves, above 1 boosts."""
Queries = Sequence[Sequence[ChoicePrompt]]
"""Queries, each its prompts (templates)."""


def layer_sizes(lm: LoadedModel) -> list[int]:
    """Neurons of each layer's FFN."""
    return [site.n_neurons for site in lm.sites]


def scaled(neurons: Sequence[Neuron], multiplier: float) -> Edit:
    """The edit that multiplies f of each neuron by `multiplier`."""
    return {(int(l), int(n)): float(multiplier) for l, n in neurons}


def check_multiplier(multiplier: float) -> None:
    """One-line QRNError for a multiplier that is not a finite number."""
    if isinstance(multiplier, bool) or not math.isfinite(multiplier):
        raise QRNError(f"multiplier {multiplier} is not a finite number; use 0 to suppress, 2 to boost.")


def _probability(value: float) -> bool:
    """Whether `value` is a probability (NaN is not)."""
    return 0 <= value <= 1


@dataclass(frozen=True, eq=False)
class Measure:
    """One line of a scorecard: over some queries' prompts, P(correct) (renormalised) and accuracy before and
    after the edit, beside the same of k matched random controls and the test of the change."""

    name: str
    queries: int
    """How many queries the prompts come from (the sample size of locality)."""
    prompts: int
    p_before: float
    p_after: float
    accuracy_before: float
    accuracy_after: float
    control_p: float
    """Mean over the controls of P(correct) after the control edit."""
    control_accuracy: float
    test: ControlTest
    """The change p_after - p_before against the controls' changes."""

    def __post_init__(self) -> None:
        values = (self.p_before, self.p_after, self.accuracy_before, self.accuracy_after)
        if not all(map(_probability, (*values, self.control_p, self.control_accuracy))):
            raise ValueError(f"{self.name}: probabilities and accuracies lie in [0, 1]")
        if not 1 <= self.queries <= self.prompts:
            raise ValueError(f"{self.name}: needs at least one query and a prompt per query")
        if not math.isclose(self.test.effect, self.p_after - self.p_before, abs_tol=1e-9):
            raise ValueError(f"{self.name}: the tested effect is not p_after - p_before")


@dataclass(frozen=True, eq=False)
class Scorecard:
    """An edit's measures, each beside its matched control: a query edit's `MEASURES`, or a group edit's accuracy
    per group on held-out queries."""

    edited: str
    """What was edited, in words (a query and method, or a group)."""
    neurons: tuple[Neuron, ...]
    multiplier: float
    seed: int
    measures: tuple[Measure, ...]
    fluency: Fluency | None = None
    """Free-form generation before and after, when asked for (it is slow)."""

    def __post_init__(self) -> None:
        if not self.neurons or len(set(self.neurons)) != len(self.neurons):
            raise ValueError("a scorecard's edit has distinct neurons, at least one")
        if not self.measures or len({m.test.k for m in self.measures}) != 1:
            raise ValueError("every measure of a scorecard has the same control draws")

    @property
    def controls(self) -> int:
        """The number of control draws."""
        return self.measures[0].test.k

    def measure(self, name: str) -> Measure:
        """The measure of this name."""
        return next(m for m in self.measures if m.name == name)

    def table(self) -> pd.DataFrame:
        """One row per measure: sizes, P(correct) and accuracy before, after and under the controls, the change, the
        controls' interval and the p-value."""
        return pd.DataFrame(
            [
                {
                    "measure": m.name,
                    "queries": m.queries,
                    "prompts": m.prompts,
                    "p_before": m.p_before,
                    "p_after": m.p_after,
                    "p_control": m.control_p,
                    "change": m.test.effect,
                    "control_low": m.test.low,
                    "control_high": m.test.high,
                    "p_value": m.test.p_value,
                    "acc_before": m.accuracy_before,
                    "acc_after": m.accuracy_after,
                    "acc_control": m.control_accuracy,
                }
                for m in self.measures
            ]
        )


def measured(
    lm: LoadedModel,
    sets: Mapping[str, Queries],
    neurons: Sequence[Neuron],
    multiplier: float,
    controls: int = 100,
    seed: int = 0,
    stems: Sequence[PromptStem | None] = (),
    level: float = 0.95,
    max_elements: int = MAX_ELEMENTS,
    progress: Progress | None = None,
) -> tuple[Measure, ...]:
    """One `Measure` per named set of queries: unedited, edited and each of `controls` matched random draws
    (`matched_controls`) evaluated as packed rows of the same forwards."""
    check_multiplier(multiplier)
    if controls < 1:
        raise QRNError(f"--controls is {controls}; it must be at least 1.")
    if not neurons:
        raise QRNError("the edit has no neurons; pick a query, method or group that has some.")
    sets = {name: queries for name, queries in sets.items() if queries}
    draws = matched_controls(neurons, layer_sizes(lm), controls, seed)
    edits = [{}, scaled(neurons, multiplier), *(scaled(d, multiplier) for d in draws)]
    queries = [q for qs in sets.values() for q in qs]
    raw = probs_under_edits(lm, queries, edits, stems, max_elements, progress)  # (edits, prompts, options)
    correct = np.array([p.correct for q in queries for p in q])  # (prompts,)
    share, right = correct_share(raw, correct), answered_right(raw, correct)  # (edits, prompts) each
    out, start = [], 0
    for name, qs in sets.items():
        n = sum(map(len, qs))
        p = share[:, start : start + n].mean(axis=1)  # (edits,)
        acc = right[:, start : start + n].mean(axis=1)  # (edits,)
        start += n
        out.append(
            Measure(
                name,
                len(qs),
                n,
                float(p[0]),
                float(p[1]),
                float(acc[0]),
                float(acc[1]),
                float(p[2:].mean()),
                float(acc[2:].mean()),
                control_test(float(p[1] - p[0]), p[2:] - p[0], direction(multiplier), level),
            )
        )
    return tuple(out)


def scorecard(
    lm: LoadedModel,
    sets: Mapping[str, Queries],
    neurons: Sequence[Neuron],
    multiplier: float,
    edited: str = "edit",
    controls: int = 100,
    seed: int = 0,
    stems: Sequence[PromptStem | None] = (),
    max_elements: int = MAX_ELEMENTS,
    progress: Progress | None = None,
) -> Scorecard:
    """The edit's scorecard: reliability (required), generalization and locality, `MEASURES` by name, each
    beside `controls` matched random draws; a set without queries is left out."""
    unknown = [name for name in sets if name not in MEASURES]
    if unknown or not sets.get("reliability"):
        raise QRNError(f"a scorecard measures {', '.join(MEASURES)} (reliability required); got {', '.join(sets)}")
    return Scorecard(
        edited,
        tuple(dict.fromkeys(neurons)),
        float(multiplier),
        seed,
        measured(lm, sets, neurons, multiplier, controls, seed, stems, max_elements=max_elements, progress=progress),
    )


def group_edit(
    lm: LoadedModel,
    held_out: Mapping[str, Queries],
    group: str,
    neurons: Sequence[Neuron],
    multiplier: float = 0.0,
    controls: int = 10,
    seed: int = 0,
    stems: Sequence[PromptStem | None] = (),
    max_elements: int = MAX_ELEMENTS,
    progress: Progress | None = None,
) -> Scorecard:
    """A group's neurons edited, measured on every group's held-out queries (queries not used to build the set), one
    measure per group beside `controls` matched random draws: the edited group should move and the others stay."""
    if not held_out.get(group):
        raise QRNError(f"group {group!r} has no held-out queries; pick one of {', '.join(held_out)}.")
    measures = measured(
        lm, held_out, neurons, multiplier, controls, seed, stems, max_elements=max_elements, progress=progress
    )
    return Scorecard(f"group {group}", tuple(dict.fromkeys(neurons)), float(multiplier), seed, measures)


def flip_points(multipliers: np.ndarray, margins: np.ndarray) -> tuple[float, float]:
    """(below, above): the multipliers nearest 1 on each side where the answer flips, i.e. where the margin
    (P(correct) minus the best other option, `readable.margin`) changes sign from its sign at 1, linearly
    interpolated between the sweep points around the change; NaN on a side without a flip."""
    one = int(np.flatnonzero(multipliers == 1.0)[0])
    right = margins[one] > 0

    def cross(a: int, b: int) -> float:
        """Where the line through points a and b crosses margin 0."""
        x0, x1, m0, m1 = multipliers[a], multipliers[b], margins[a], margins[b]
        return float(x0 + (0 - m0) * (x1 - x0) / (m1 - m0)) if m1 != m0 else float(x0)

    below = next((cross(j, j + 1) for j in range(one - 1, -1, -1) if (margins[j] > 0) != right), np.nan)
    above = next((cross(j - 1, j) for j in range(one + 1, len(margins)) if (margins[j] > 0) != right), np.nan)
    return below, above


@dataclass(frozen=True, eq=False)
class DoseResponse:
    """P(correct) (renormalised), accuracy and margin of a query's prompts as each neuron set's multiplier sweeps,
    and where the answer flips."""

    multipliers: np.ndarray
    """(points,) increasing, 1 among them."""
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    """Neurons in each set."""
    p_correct: np.ndarray
    """(sets, points) mean over the prompts."""
    accuracy: np.ndarray
    """(sets, points) share of prompts answered right."""
    margin: np.ndarray
    """(sets, points) mean over the prompts of P(correct) minus the best other option's."""
    flip_below: np.ndarray
    """(sets,) the multiplier below 1 nearest 1 at which the mean margin changes sign; NaN if none in the sweep."""
    flip_above: np.ndarray
    """(sets,) the same above 1."""

    def __post_init__(self) -> None:
        shape = (len(self.names), len(self.multipliers))
        if not (self.p_correct.shape == self.accuracy.shape == self.margin.shape == shape):
            raise ValueError("p_correct, accuracy and margin are (sets, points)")
        if len(self.sizes) != len(self.names) or not self.flip_below.shape == self.flip_above.shape == (shape[0],):
            raise ValueError("sizes and flips have one entry per set")
        if not (np.diff(self.multipliers) > 0).all() or 1.0 not in self.multipliers:
            raise ValueError("the multipliers increase and include 1 (the unedited model)")
        if not (((0 <= self.p_correct) & (self.p_correct <= 1)).all() and np.abs(self.margin).max() <= 1):
            raise ValueError("P(correct) lies in [0, 1] and margins in [-1, 1]")
        if not ((self.flip_below < 1) | np.isnan(self.flip_below)).all() or (self.flip_above <= 1).any():
            raise ValueError("flip_below lies below 1 and flip_above above it")

    def table(self) -> pd.DataFrame:
        """Long table: set, neurons, multiplier, p_correct, accuracy, margin."""
        sets, points = np.meshgrid(np.arange(len(self.names)), np.arange(len(self.multipliers)), indexing="ij")
        return pd.DataFrame(
            {
                "set": np.array(self.names, object)[sets.ravel()],
                "neurons": np.array(self.sizes)[sets.ravel()],
                "multiplier": self.multipliers[points.ravel()],
                "p_correct": self.p_correct.ravel(),
                "accuracy": self.accuracy.ravel(),
                "margin": self.margin.ravel(),
            }
        )

    def flips(self) -> pd.DataFrame:
        """One row per set: set, neurons, flip_below, flip_above."""
        return pd.DataFrame(
            {"set": self.names, "neurons": self.sizes, "flip_below": self.flip_below, "flip_above": self.flip_above}
        )


def dose_response(
    lm: LoadedModel,
    prompts: Sequence[ChoicePrompt],
    sets: Mapping[str, Sequence[Neuron]],
    multipliers: Sequence[float] = SWEEP,
    stems: Sequence[PromptStem | None] = (),
    max_elements: int = MAX_ELEMENTS,
) -> DoseResponse:
    """Each neuron set scaled by each multiplier (1 added when missing), packed rows of few forwards."""
    for m in multipliers:
        check_multiplier(m)
    if not sets:
        raise QRNError("no neuron sets to sweep; pick a query that has QR neurons.")
    xs = np.unique(np.asarray([*multipliers, 1.0], np.float64))  # (points,)
    edits = [scaled(neurons, x) for neurons in sets.values() for x in xs]
    raw = probs_under_edits(lm, [prompts], edits, stems, max_elements)  # (sets * points, prompts, options)
    raw = raw.reshape(len(sets), len(xs), *raw.shape[1:])  # (sets, points, prompts, options)
    correct = np.array([p.correct for p in prompts])  # (prompts,)
    margins = margin(raw, correct).mean(axis=-1)  # (sets, points)
    flips = np.array([flip_points(xs, row) for row in margins]).reshape(len(sets), 2)  # (sets, 2)
    return DoseResponse(
        xs,
        tuple(sets),
        tuple(len(set(n)) for n in sets.values()),
        correct_share(raw, correct).mean(axis=-1),
        answered_right(raw, correct).mean(axis=-1),
        margins,
        flips[:, 0],
        flips[:, 1],
    )


@dataclass(frozen=True, eq=False)
class NeuronEffects:
    """Each neuron of a set edited alone: P(correct) (renormalised, mean over the prompts) beside the unedited value
    and the whole set's, so one can see which neurons carry the effect."""

    neurons: tuple[Neuron, ...]
    multiplier: float
    p_before: float
    p_all: float
    """The whole set edited together."""
    p_alone: np.ndarray
    """(neurons,) each neuron edited alone."""

    def __post_init__(self) -> None:
        if self.p_alone.shape != (len(self.neurons),) or not self.neurons:
            raise ValueError("one P(correct) per neuron, at least one neuron")
        if not all(map(_probability, (self.p_before, self.p_all, *self.p_alone))):
            raise ValueError("probabilities lie in [0, 1]")

    @property
    def change(self) -> np.ndarray:
        """(neurons,) each neuron's change of P(correct) alone."""
        return self.p_alone - self.p_before

    def table(self) -> pd.DataFrame:
        """One row per neuron (layer, neuron, p_alone, change), the largest |change| first."""
        frame = pd.DataFrame(
            {
                "layer": [l for l, _ in self.neurons],
                "neuron": [n for _, n in self.neurons],
                "p_alone": self.p_alone,
                "change": self.change,
            }
        )
        return frame.iloc[np.argsort(-np.abs(self.change), kind="stable")].reset_index(drop=True)


def neuron_effects(
    lm: LoadedModel,
    prompts: Sequence[ChoicePrompt],
    neurons: Sequence[Neuron],
    multiplier: float = 0.0,
    stems: Sequence[PromptStem | None] = (),
    max_elements: int = MAX_ELEMENTS,
) -> NeuronEffects:
    """Unedited, the whole set, then each neuron alone, scaled by `multiplier`: packed rows of one forward where
    memory allows."""
    check_multiplier(multiplier)
    neurons = list(dict.fromkeys((int(l), int(n)) for l, n in neurons))
    if not neurons:
        raise QRNError("the set has no neurons; pick a query or method that has some.")
    edits = [{}, scaled(neurons, multiplier), *(scaled([n], multiplier) for n in neurons)]
    raw = probs_under_edits(lm, [prompts], edits, stems, max_elements)  # (2 + neurons, prompts, options)
    p = correct_share(raw, np.array([q.correct for q in prompts])).mean(axis=1)  # (2 + neurons,)
    return NeuronEffects(tuple(neurons), float(multiplier), float(p[0]), float(p[1]), p[2:])
