"""The query lab's evidence on a finished run (issue 25): a stored query's or group's neurons edited and scored by
`qrcore.editing.evidence` beside matched random controls, every prompt asked as the run asked it.

`read_lab` reads the store (no model); the other functions take the model the run was computed with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
import random

import pandas as pd

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.queries import Query
from qrcore.editing import evidence
from qrcore.editing.controls import Neuron, matched_controls
from qrcore.editing.fluency import fluency
from qrcore.errors import QRNError
from qrcore.evaluation.evaluate import held_out, read_finished
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress
from qrcore.selection import analysis
from qrcore.selection.qrnca import METHODS


@dataclass(frozen=True)
class ControlledEdit:
    """How the lab edits a neuron set: f scaled by `multiplier`, beside `controls` matched random draws from `seed`."""

    multiplier: float = 0.0
    controls: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        evidence.check_multiplier(self.multiplier)
        if self.controls < 1:
            raise QRNError(f"--controls is {self.controls}; it must be at least 1.")


@dataclass(frozen=True)
class LabRun:
    """A finished run as the lab reads it: its done queries, their groups and every method's QR neurons."""

    info: store.RunInfo
    queries: dict[str, Query]
    """The run's done queries by id, in dataset order."""
    qr: dict[str, pd.DataFrame]
    """Method -> QR neurons (query_id, rank, layer, neuron, score)."""

    def query(self, query_id: str) -> Query:
        """The done query of this id; one-line QRNError naming a few ids otherwise."""
        if query_id not in self.queries:
            some = ", ".join(list(self.queries)[:3])
            raise QRNError(f"run {self.info.name!r} has no query {query_id!r}; its queries are e.g. {some}.")
        return self.queries[query_id]

    def check_method(self, method: str) -> None:
        """One-line QRNError for a method that is not QRNCA or a baseline."""
        if method not in self.qr:
            raise QRNError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")

    def group(self, group: str) -> list[str]:
        """The group's done query ids; one-line QRNError naming the run's groups otherwise."""
        groups = self.groups()
        if group not in groups:
            raise QRNError(f"run {self.info.name!r} has no group {group!r}; its groups are {', '.join(groups)}.")
        return groups[group]

    def neurons(self, query_id: str, method: str = "qrnca", top: int | None = None) -> list[Neuron]:
        """The query's QR neurons by `method`, best first; its `top` best only when given."""
        self.check_method(method)
        rows = self.qr[method][self.qr[method]["query_id"] == self.query(query_id).id]
        return [(int(l), int(n)) for l, n in zip(rows["layer"], rows["neuron"])][:top]

    def groups(self) -> dict[str, list[str]]:
        """Group -> its done query ids, in dataset order, groups sorted."""
        out: dict[str, list[str]] = {}
        for q in self.queries.values():
            out.setdefault(q.group, []).append(q.id)
        return dict(sorted(out.items()))

    def held_out(self) -> dict[str, list[str]]:
        """Group -> its held-out query ids (`evaluate.held_out`, as in Table 7)."""
        return held_out(self.groups())

    def prompter(self, lm: LoadedModel, shuffle: int = 0) -> NeuronAttribution:
        """The run's prompt builder for `lm`, its options' seed moved on by `shuffle` (another order of the options)."""
        s = self.info.settings
        return NeuronAttribution(lm, s.attribution, replace(s.prompt, seed=s.prompt.seed + shuffle))


def read_lab(run: str, db: str | None = None) -> LabRun:
    """The finished run `run` for the lab; a QRNError for an unknown or unfinished run, before any model loads."""
    return LabRun(*read_finished(run, db, done_only=True))


def edit_scorecard(
    lm: LoadedModel,
    lab: LabRun,
    query: Query,
    neurons: Sequence[Neuron],
    edited: str,
    edit: ControlledEdit = ControlledEdit(),
    locality: int = 10,
    paraphrases: Sequence[str] = (),
    with_fluency: bool = False,
    progress: Progress | None = None,
) -> evidence.Scorecard:
    """The scorecard of `neurons` scaled as `edit` says, for `query` (the run's, or a question of one's own asked
    with the run's prompt settings).

    Reliability: the query's prompts as the run asked them. Generalization: its options in another order (for a
    query of options, not of ready-made prompts), the same fact in the run's other queries (the language set's
    `fact`) and each of `paraphrases` asked with the query's options. Locality: up to `locality` other queries of its
    group and as many of other groups, drawn with the edit's seed.
    """
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    if paraphrases and query.prompts:
        raise QRNError(f"query {query.id!r} is ready-made prompts; a paraphrase needs its options, so drop it.")
    if locality < 0:
        raise QRNError(f"--locality is {locality}; give 0 or more queries.")
    fact = query.meta.get("fact")
    same_fact = [
        q for q in lab.queries.values() if fact is not None and q.meta.get("fact") == fact and q.id != query.id
    ]
    taken = {query.id, *(q.id for q in same_fact)}
    rng = random.Random(edit.seed)
    pools = {
        "locality (same group)": [q for q in lab.queries.values() if q.group == query.group],
        "locality (other groups)": [q for q in lab.queries.values() if q.group != query.group],
    }
    sample = {
        name: rng.sample(kept, min(locality, len(kept)))
        for name, pool in pools.items()
        for kept in [[q for q in pool if q.id not in taken]]
    }
    asked = [replace(query, id=f"{query.id} (paraphrase {i})", question=t) for i, t in enumerate(paraphrases, 1)]
    attr = lab.prompter(lm)
    sets = {
        "reliability": [attr.prompts(query)],
        "generalization": ([] if query.prompts else [lab.prompter(lm, shuffle=1).prompts(query)])
        + [attr.prompts(q) for q in [*same_fact, *asked]],
        **{name: [attr.prompts(q) for q in qs] for name, qs in sample.items()},
    }
    card = evidence.scorecard(
        lm,
        sets,
        neurons,
        edit.multiplier,
        edited,
        edit.controls,
        edit.seed,
        attr.template_stems([query, *same_fact, *asked, *(q for qs in sample.values() for q in qs)]),
        progress=progress,
    )
    if not with_fluency:
        return card
    return replace(card, fluency=fluency(lm, query.question, evidence.scaled(neurons, edit.multiplier)))


def query_scorecard(
    lm: LoadedModel,
    lab: LabRun,
    query_id: str,
    method: str = "qrnca",
    edit: ControlledEdit = ControlledEdit(),
    locality: int = 10,
    paraphrases: Sequence[str] = (),
    top: int | None = None,
    with_fluency: bool = False,
    progress: Progress | None = None,
) -> evidence.Scorecard:
    """`edit_scorecard` of a stored query's QR neurons by `method` (its `top` best when given)."""
    neurons = lab.neurons(query_id, method, top)
    return edit_scorecard(
        lm,
        lab,
        lab.query(query_id),
        neurons,
        f"query {query_id}, {method}",
        edit,
        locality,
        paraphrases,
        with_fluency,
        progress,
    )


def edit_sweep(
    lm: LoadedModel,
    lab: LabRun,
    query: Query,
    sets: Mapping[str, Sequence[Neuron]],
    multipliers: Sequence[float] = evidence.SWEEP,
) -> evidence.DoseResponse:
    """Dose-response of the query's prompts (as the run asks them) to each named neuron set (empty sets left out)."""
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    attr = lab.prompter(lm)
    kept = {name: neurons for name, neurons in sets.items() if neurons}
    return evidence.dose_response(lm, attr.prompts(query), kept, multipliers, attr.template_stems([query]))


def control_sweep(
    lm: LoadedModel,
    lab: LabRun,
    query: Query,
    neurons: Sequence[Neuron],
    edit: ControlledEdit = ControlledEdit(),
    multipliers: Sequence[float] = evidence.SWEEP,
) -> evidence.DoseResponse:
    """`edit_sweep` of the edit's matched random controls of `neurons` (same layers and count), one set each."""
    draws = matched_controls(neurons, evidence.layer_sizes(lm), edit.controls, edit.seed)
    return edit_sweep(lm, lab, query, {f"control {i}": d for i, d in enumerate(draws, 1)}, multipliers)


def query_sweep(
    lm: LoadedModel,
    lab: LabRun,
    query_id: str,
    methods: Sequence[str] = METHODS,
    multipliers: Sequence[float] = evidence.SWEEP,
) -> evidence.DoseResponse:
    """`edit_sweep` of each method's QR neurons of a stored query (methods without any left out)."""
    sets = {m: lab.neurons(query_id, m) for m in methods}
    return edit_sweep(lm, lab, lab.query(query_id), sets, multipliers)


def edit_neuron_effects(
    lm: LoadedModel, lab: LabRun, query: Query, neurons: Sequence[Neuron], multiplier: float = 0.0
) -> evidence.NeuronEffects:
    """Each of `neurons` scaled alone on the query's prompts (as the run asks them), beside the whole set."""
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    attr = lab.prompter(lm)
    return evidence.neuron_effects(lm, attr.prompts(query), neurons, multiplier, attr.template_stems([query]))


def query_neuron_effects(
    lm: LoadedModel, lab: LabRun, query_id: str, method: str = "qrnca", multiplier: float = 0.0
) -> evidence.NeuronEffects:
    """`edit_neuron_effects` of a stored query's QR neurons by `method`."""
    return edit_neuron_effects(lm, lab, lab.query(query_id), lab.neurons(query_id, method), multiplier)


def group_neurons(lab: LabRun, group: str, method: str = "qrnca") -> list[Neuron]:
    """The group's neuron set: the union of the QR neurons (by `method`) of its queries that are not held out, so no
    measured query built it (as Table 7's)."""
    lab.check_method(method)
    held = lab.held_out()
    train = {q: group for q in lab.group(group) if q not in held[group]}
    sets = analysis.group_neuron_sets(lab.qr[method][lab.qr[method]["query_id"].isin(list(train))], train)
    return list(zip(sets["layer"].astype(int), sets["neuron"].astype(int)))


def group_scorecard(
    lm: LoadedModel,
    lab: LabRun,
    group: str,
    neurons: Sequence[Neuron] | None = None,
    method: str = "qrnca",
    edit: ControlledEdit = ControlledEdit(),
    progress: Progress | None = None,
) -> evidence.Scorecard:
    """A group's neurons (`group_neurons`, or given `neurons` such as a heatmap's top cells, used as they are)
    edited; P(correct) and accuracy per group on its held-out queries (`LabRun.held_out`)."""
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    lab.group(group)
    neurons = group_neurons(lab, group, method) if neurons is None else neurons
    held = lab.held_out()
    attr = lab.prompter(lm)
    queries = [lab.queries[q] for ids in held.values() for q in ids]
    prompts = {g: [attr.prompts(lab.queries[q]) for q in ids] for g, ids in held.items()}
    return evidence.group_edit(
        lm,
        prompts,
        group,
        neurons,
        edit.multiplier,
        edit.controls,
        edit.seed,
        attr.template_stems(queries),
        progress=progress,
    )
