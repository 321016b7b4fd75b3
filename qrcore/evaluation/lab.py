"""The query lab's evidence on a finished run (issue 25): a stored query's or group's neurons edited and scored by
`qrcore.editing.evidence` beside matched random controls, every prompt asked as the run asked it.

`read_lab` reads the store (no model); the other functions take the model the run was computed with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
import random

import pandas as pd

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.queries import Query
from qrcore.editing import evidence
from qrcore.editing.controls import Neuron
from qrcore.editing.fluency import fluency
from qrcore.errors import QRNError
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress
from qrcore.selection import analysis
from qrcore.selection.qrnca import METHODS

HELD_OUT_EVERY = 5
"""Every fifth query of each group is held out of its group's neuron set, as in the evaluation's Table 7."""


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
        """Group -> its held-out query ids: every `HELD_OUT_EVERY`th, the first included."""
        return {g: ids[::HELD_OUT_EVERY] for g, ids in self.groups().items()}

    def prompter(self, lm: LoadedModel, shuffle: int = 0) -> NeuronAttribution:
        """The run's prompt builder for `lm`, its options' seed moved on by `shuffle` (another order of the options)."""
        s = self.info.settings
        return NeuronAttribution(lm, s.attribution, replace(s.prompt, seed=s.prompt.seed + shuffle))


def read_lab(run: str, db: str | None = None) -> LabRun:
    """The finished run `run` for the lab; a QRNError for an unknown or unfinished run, before any model loads."""
    with store.connect(db, read_only=True) as con:
        info = store.finished_run(con, run)
        done = store.run_groups(con, info.run_id)
        queries = {q.id: q for q in store.load_queries(con, store.run_dataset_id(con, info.run_id)) if q.id in done}
        qr = {m: store.read_qr_neurons(con, info.run_id, m) for m in METHODS}
    return LabRun(info, queries, qr)


def query_scorecard(
    lm: LoadedModel,
    lab: LabRun,
    query_id: str,
    method: str = "qrnca",
    multiplier: float = 0.0,
    controls: int = 100,
    seed: int = 0,
    locality: int = 10,
    paraphrases: Sequence[str] = (),
    top: int | None = None,
    with_fluency: bool = False,
    progress: Progress | None = None,
) -> evidence.Scorecard:
    """The scorecard of a query's QR neurons (by `method`, its `top` best) scaled by `multiplier`.

    Reliability: the query's prompts as the run asked them. Generalization: its options in another order (for a
    query of options, not of ready-made prompts), the same fact in the dataset's other queries (the language set's
    `fact`) and each of `paraphrases` asked with the query's options. Locality: up to `locality` other queries of its
    group and as many of other groups, drawn with `seed`.
    """
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    query = lab.query(query_id)
    if paraphrases and query.prompts:
        raise QRNError(f"query {query.id!r} is ready-made prompts; a paraphrase needs its options, so drop it.")
    if locality < 0:
        raise QRNError(f"--locality is {locality}; give 0 or more queries.")
    fact = query.meta.get("fact")
    same_fact = [
        q for q in lab.queries.values() if fact is not None and q.meta.get("fact") == fact and q.id != query.id
    ]
    taken = {query.id, *(q.id for q in same_fact)}
    rng = random.Random(seed)
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
    neurons = lab.neurons(query.id, method, top)
    card = evidence.scorecard(
        lm,
        sets,
        neurons,
        multiplier,
        f"query {query.id}, {method}",
        controls,
        seed,
        attr.template_stems([query, *same_fact, *asked, *(q for qs in sample.values() for q in qs)]),
        progress=progress,
    )
    if not with_fluency:
        return card
    return replace(card, fluency=fluency(lm, query.question, evidence.scaled(neurons, multiplier)))


def query_sweep(
    lm: LoadedModel,
    lab: LabRun,
    query_id: str,
    methods: Sequence[str] = METHODS,
    multipliers: Sequence[float] = evidence.SWEEP,
) -> evidence.DoseResponse:
    """Dose-response of the query's prompts to each method's neurons for it (methods without any left out)."""
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    sets = {m: neurons for m in methods for neurons in [lab.neurons(query_id, m)] if neurons}
    attr = lab.prompter(lm)
    return evidence.dose_response(lm, attr.prompts(lab.query(query_id)), sets, multipliers)


def query_neuron_effects(
    lm: LoadedModel, lab: LabRun, query_id: str, method: str = "qrnca", multiplier: float = 0.0
) -> evidence.NeuronEffects:
    """Each of the query's QR neurons (by `method`) scaled alone, beside the whole set."""
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    prompts = lab.prompter(lm).prompts(lab.query(query_id))
    return evidence.neuron_effects(lm, prompts, lab.neurons(query_id, method), multiplier)


def group_scorecard(
    lm: LoadedModel,
    lab: LabRun,
    group: str,
    method: str = "qrnca",
    multiplier: float = 0.0,
    controls: int = 100,
    seed: int = 0,
    neurons: Sequence[Neuron] | None = None,
    progress: Progress | None = None,
) -> evidence.Scorecard:
    """A group's neurons edited, P(correct) and accuracy per group on its held-out queries (`LabRun.held_out`).

    The neurons are the union of the QR neurons (by `method`) of the group's other queries, so no measured query
    built the set; given `neurons` (e.g. a heatmap's top cells) are used as they are.
    """
    store.require_model(lab.info, lm.spec.name, lm.fingerprint)
    held = lab.held_out()
    if neurons is None:
        lab.check_method(method)
        train = {q: group for q in lab.group(group) if q not in held[group]}
        sets = analysis.group_neuron_sets(lab.qr[method][lab.qr[method]["query_id"].isin(list(train))], train)
        neurons = list(zip(sets["layer"].astype(int), sets["neuron"].astype(int)))
    attr = lab.prompter(lm)
    queries = [lab.queries[q] for ids in held.values() for q in ids]
    prompts = {g: [attr.prompts(lab.queries[q]) for q in ids] for g, ids in held.items()}
    return evidence.group_edit(
        lm, prompts, group, neurons, multiplier, controls, seed, attr.template_stems(queries), progress=progress
    )
