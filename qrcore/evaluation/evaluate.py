"""The paper's model-based evaluations of a finished run, stored in the run's evaluations table.

- Table 4: boost (x2) or suppress (x0) a query's detected neurons at the answer position; percent change of the
  correct letter's probability for the query itself (related) and for a query of another group (unrelated);
  PCR = |related| / |unrelated| per method and group.
- Table 6: flip rates of the predicted option under the same edits.
- Table 7: neuron-based answer prediction. Every fifth evaluated query of each group is held out; its group's neuron
  set is the union of the QR neurons of the group's other queries; each option letter is appended to the prompt, and
  the predicted option is the one under which that set is most active. Reported beside the model's own prompt-based
  accuracy on the same held-out queries and chance.
- Group prediction (ours, not in the paper): the held-out query's group is predicted as the group whose neuron set
  is most active at the answer position.

A killed evaluation resumes: each query's probabilities under every edit, then each held-out query's activations and
predictions, are checkpointed as they finish (`qrcore.evaluation.checkpoint`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import random
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.prefixes import PackedPrefix, PromptStem, prefix_cache
from qrcore.data.prompts import ChoicePrompt
from qrcore.data.queries import Query
from qrcore.editing.scaling import (
    BOOST,
    SUPPRESS,
    correct_probs,
    letter_probs_under,
    pad_rows,
)
from qrcore.errors import QRNError
from qrcore.evaluation.checkpoint import EvaluationCheckpoint
from qrcore.model.ffn import FFNSite
from qrcore.model.forward import causal_mask
from qrcore.model.interventions import patch_ffn
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress
from qrcore.selection import analysis
from qrcore.selection.qrnca import METHODS

EDITS = {"boost": BOOST, "suppress": SUPPRESS}
HELD_OUT_EVERY = 5
"""Every fifth query of each group is held out of its group's neuron set (Table 7)."""
HELD_ANSWER, HELD_HITS = "@held-out-answer", "@held-out-hits"
"""Suffixes of a held-out query's checkpoint entries (its id alone holds its edits' probabilities)."""


@dataclass(frozen=True)
class EvaluationRow:
    """One stored evaluation number: `metric` of `evaluation` (suppress, boost, group_prediction, answer_prediction)
    for `method` over `group_name` ("all" for every group)."""

    method: str
    evaluation: str
    group_name: str
    metric: str
    value: float


@dataclass(frozen=True)
class HeldOut:
    """What group prediction and Table 7 read of an evaluation: the model's FFN sites and template stems, the
    held-out queries, every chosen query's prompts and unedited letter probabilities, the groups and QR neurons."""

    lm: LoadedModel
    sites: list[FFNSite]
    stems: Sequence[PromptStem | None]
    queries: list[str]
    """The held-out query ids (`held_out`)."""
    prompts: dict[str, list[ChoicePrompt]]
    before: dict[str, np.ndarray]
    """Query id -> (templates, options) letter probabilities unedited."""
    group: dict[str, str]
    qr: dict[str, pd.DataFrame]
    """Method -> its QR neurons (query_id, rank, layer, neuron, score)."""

    def __post_init__(self) -> None:
        missing = [q for q in self.queries if q not in self.prompts or q not in self.before or q not in self.group]
        if missing:
            raise ValueError(f"held-out queries without prompts, probabilities or group: {', '.join(missing)}")
        if set(self.qr) != set(METHODS):
            raise ValueError(f"QR neurons of {sorted(self.qr)}, not of every method {list(METHODS)}")


class EditedQuery(NamedTuple):
    """A query's letter probabilities under one edit of its neurons, and its control query's before and after."""

    query: str
    control: str
    after: np.ndarray  # (templates, options)
    control_before: np.ndarray  # (control's templates, options)
    control_after: np.ndarray  # (control's templates, options)


def held_out_activations(
    lm: LoadedModel, sites: list[FFNSite], prompts: list[ChoicePrompt], cache: PackedPrefix
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per prompt: f at its answer position (layers, neurons), for group prediction, and f at the position of each
    option letter appended to it (options, layers, neurons), for Table 7.

    One forward after the prompts' cached prefixes (`prefix_cache`) runs every prompt's answer token and, one
    position later, each of its letters: a letter row sees its prompt's prefix, its answer token and itself.
    Its oracle is `qrcore.attribution.oracle.held_out_oracle`, prompt by prompt.
    """
    device = lm.device
    own = sum(cache.lengths)  # the cached prefixes' key columns, prompt after prompt; the rows' keys follow
    ids: list[int] = []  # the rows: each prompt's answer token, then its letters
    query_pos: list[int] = []
    answer_rows: list[int] = []
    seen: list[list[int]] = []  # per row, the key columns it sees
    start = 0
    for prompt, length in zip(prompts, cache.lengths):
        prefix = list(range(start, start + length))
        answer_rows.append(len(ids))
        answer = own + len(ids)
        ids.append(prompt.input_ids[-1])
        query_pos.append(length)
        seen.append([*prefix, answer])
        for letter in prompt.letter_ids:
            seen.append([*prefix, answer, own + len(ids)])
            ids.append(letter)
            query_pos.append(length + 1)
        start += length
    key_pos = [k for length in cache.lengths for k in range(length)] + query_pos
    mask = causal_mask(lm.model.config, seen, key_pos, query_pos, lm.model.dtype, device)
    recorded: dict[int, torch.Tensor] = {}

    def record(layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (1, rows, neurons)
        recorded[layer] = f[0].detach()
        return f

    with torch.no_grad(), patch_ffn(lm.model, record, sites=sites):
        lm.model(
            torch.tensor([ids], device=device),  # (1, rows)
            position_ids=torch.tensor([query_pos], device=device),
            attention_mask=mask,
            past_key_values=DynamicCache(cache.kv),
            use_cache=True,
        )
    f = torch.stack([recorded[s.layer] for s in sites], dim=1).float().cpu().numpy()  # (rows, layers, neurons)
    return [(f[a], f[a + 1 : a + 1 + len(p.letter_ids)]) for a, p in zip(answer_rows, prompts)]


def held_out(groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Group -> its held-out query ids: every `HELD_OUT_EVERY`th of its ids in their order, the first included."""
    return {g: list(ids[::HELD_OUT_EVERY]) for g, ids in groups.items()}


def read_finished(
    run: str, db: str | None = None, done_only: bool = False
) -> tuple[store.RunInfo, dict[str, Query], dict[str, pd.DataFrame]]:
    """The finished run `run`, its dataset's queries by id (only those the run did, with `done_only`) and its QR
    neurons per method; a QRNError for an unknown or unfinished run."""
    with store.connect(db, read_only=True) as con:
        info = store.complete_run(con, run)
        done = store.run_groups(con, info.run_id) if done_only else None
        queries = {
            q.id: q
            for q in store.load_queries(con, store.run_dataset_id(con, info.run_id))
            if done is None or q.id in done
        }
        qr = {m: store.qr_neurons(con, info.run_id, m) for m in METHODS}
    return info, queries, qr


def plan_evaluation(
    run: str, db: str | None = None, per_group: int | None = None
) -> tuple[store.RunInfo, dict[str, Query], dict[str, pd.DataFrame], list[str]]:
    """The finished run, its queries by id, its QR neurons per method and the up to per_group queries of each group
    to edit; a QRNError, before any model is loaded, for a run that cannot be evaluated."""
    info, queries, qr = read_finished(run, db)
    group = {qid: q.group for qid, q in queries.items()}
    chosen: list[str] = []
    for g in sorted(set(group.values())):
        members = [qid for qid in queries if group[qid] == g and qid in set(qr["qrnca"]["query_id"])]
        chosen += members[:per_group] if per_group else members
    groups = sorted({group[qid] for qid in chosen})
    if len(groups) < 2:
        raise QRNError(
            f"run {info.name!r} has QR neurons in {len(groups)} group(s)"
            + (f" ({', '.join(groups)})" if groups else "")
            + "; PCR compares each query with a query of "
            "another group, so evaluate a run of at least two groups"
        )
    return info, queries, qr, chosen


def evaluate_run(
    lm: LoadedModel,
    run: str,
    db: str | None = None,
    per_group: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Run Tables 4, 6 and 7 on every query of the run (or up to per_group of each group); store and return them.

    The queries a killed evaluation of the same run, seed and queries finished are read from its checkpoint. The
    store's writer lock is held throughout, so a second evaluation (or run) of the store is refused, not mixed in.
    """
    with store.writer_lock(db, "qrn evaluate"):
        return _evaluate(lm, run, db, per_group, seed, progress)


def _evaluate(
    lm: LoadedModel, run: str, db: str | None, per_group: int | None, seed: int, progress: Progress | None
) -> pd.DataFrame:
    """`evaluate_run` under the writer lock: the edits, the held-out queries, then one transaction of all numbers."""
    info, queries, qr, chosen = plan_evaluation(run, db, per_group)
    store.require_model(info, lm.spec.name, lm.fingerprint)
    group = {qid: q.group for qid, q in queries.items()}
    rng = random.Random(seed)
    attr = NeuronAttribution(lm, info.settings.attribution, info.settings.prompt)
    prompts = {qid: attr.prompts(queries[qid]) for qid in chosen}
    stems = attr.template_stems([queries[qid] for qid in chosen])  # per template: its prompts' shared start, once
    control = {qid: rng.choice([c for c in chosen if group[c] != group[qid]]) for qid in chosen}
    edits = [(method, kind, mult) for method in METHODS for kind, mult in EDITS.items()]
    neurons = {
        m: {qid: list(zip(part["layer"], part["neuron"])) for qid, part in qr[m].groupby("query_id")} for m in METHODS
    }
    checkpoint = EvaluationCheckpoint.of(db, info.run_id, chosen, control, edits)
    done = checkpoint.load()  # a killed evaluation's entries: query -> (1 + edits, query's and control's templates,
    # options); held-out query + HELD_ANSWER -> (layers, neurons), + HELD_HITS -> (templates, 2 + methods)
    uses = Counter(chosen) + Counter(control.values())  # how often each query's prefix is still needed
    caches: dict[str, PackedPrefix] = {}

    def cache(qid: str) -> PackedPrefix:
        """The query's prefix keys/values, computed on first use (a query is also another's control)."""
        if qid not in caches:
            caches[qid] = prefix_cache(lm, prompts[qid], stems)
        return caches[qid]

    by_group = {g: [c for c in chosen if group[c] == g] for g in sorted(set(group.values()))}
    held = [qid for ids in held_out(by_group).values() for qid in ids]
    steps = len(chosen) + len(held)  # each query's edits, then each held-out query's activations (Table 7)

    def step(done: int, what: str) -> None:
        if progress:
            progress(done, steps, what)

    before: dict[str, np.ndarray] = {}  # query -> (templates, options) unedited
    edited: dict[tuple[str, str], list[EditedQuery]] = defaultdict(list)  # (method, kind) -> one per chosen query
    for i, qid in enumerate(chosen):
        ctrl, k = control[qid], len(prompts[qid])
        if qid not in done:
            done[qid] = letter_probs_under(
                lm,
                prompts[qid] + prompts[ctrl],
                cache(qid) + cache(ctrl),
                [{}] + [{n: mult for n in neurons[m].get(qid, [])} for m, _, mult in edits],
            )  # (1 + edits, query's and control's templates, options): unedited, then each edit of the query's neurons
            checkpoint.save(done)
        for used in (qid, ctrl):
            uses[used] -= 1
            if not uses[used]:
                caches.pop(used, None)  # a set's prefixes would not fit in memory together on a 1.5B model
        probs = done[qid]
        before[qid] = probs[0, :k]
        for j, (method, kind, _) in enumerate(edits, start=1):
            edited[method, kind].append(EditedQuery(qid, ctrl, probs[j, :k], probs[0, k:], probs[j, k:]))
        step(i + 1, qid)
    rows: list[EvaluationRow] = []
    for method, kind, _ in edits:
        rows += _pcr_and_flip_rows(method, kind, edited[method, kind], before, prompts, group)
    held_out_inputs = HeldOut(lm, attr.sites, stems, held, prompts, before, group, qr)
    rows += _prediction_rows(held_out_inputs, done, lambda: checkpoint.save(done), step)
    frame = pd.DataFrame(rows, columns=["method", "evaluation", "group_name", "metric", "value"])
    with store.connect(db) as con:
        store.replace_evaluations(con, info.run_id, frame)
    checkpoint.remove()
    return frame


def _pcr_and_flip_rows(
    method: str,
    kind: str,
    edited: list[EditedQuery],
    before: dict[str, np.ndarray],
    prompts: dict[str, list[ChoicePrompt]],
    group: dict[str, str],
) -> list[EvaluationRow]:
    """Table 4 (related and unrelated change, PCR; per group and all) and Table 6 (flip rates) of one method's edit."""

    def mean_correct(probs: np.ndarray, qid: str) -> float:
        """Mean over the query's templates of the correct letter's probability."""
        return float(correct_probs(probs, prompts[qid]).mean())

    rel = pd.DataFrame(
        [(group[e.query], mean_correct(before[e.query], e.query), mean_correct(e.after, e.query)) for e in edited],
        columns=["group_name", "before", "after"],
    )
    rel["change"] = analysis.percent_change(rel["before"].to_numpy(), rel["after"].to_numpy())
    unrel = np.array(
        [(mean_correct(e.control_before, e.control), mean_correct(e.control_after, e.control)) for e in edited]
    )  # (queries, 2)
    rel["unrelated"] = analysis.percent_change(unrel[:, 0], unrel[:, 1])
    rows = []
    for g, part in [*rel.groupby("group_name"), ("all", rel)]:
        rows += [
            EvaluationRow(method, kind, str(g), "related_change", float(part["change"].mean())),
            EvaluationRow(method, kind, str(g), "unrelated_change", float(part["unrelated"].mean())),
            EvaluationRow(
                method, kind, str(g), "pcr", analysis.pcr(part["change"].to_numpy(), part["unrelated"].to_numpy())
            ),
        ]
    flips = analysis.flip_rates(
        pad_rows(row for e in edited for row in before[e.query]),
        pad_rows(row for e in edited for row in e.after),
        np.array([p.correct for e in edited for p in prompts[e.query]]),
    )
    return rows + [
        EvaluationRow(method, kind, "all", "correct_to_incorrect", flips.correct_to_incorrect),
        EvaluationRow(method, kind, "all", "incorrect_to_correct", flips.incorrect_to_correct),
    ]


def _training_sets(qr: pd.DataFrame, group: dict[str, str], held: list[str]) -> pd.DataFrame:
    """Each group's neuron set (group_name, layer, neuron): the QR neurons of its queries that are not held out."""
    train = {qid: g for qid, g in group.items() if qid not in set(held)}
    return analysis.group_neuron_sets(qr[qr["query_id"].isin(train)], train)


def _prediction_rows(
    h: HeldOut, done: dict[str, np.ndarray], save: Callable[[], None], step: Callable[[int, str], None]
) -> list[EvaluationRow]:
    """Group prediction and Table 7 of the held-out queries: per method (and group), the predictions' accuracy,
    beside prompt-based accuracy and chance for Table 7. Each held-out query's results go into `done` (the
    checkpoint's entries) and `save()` follows each; `step(done, what)` follows each, counted after the edited ones."""
    sets = {m: _training_sets(h.qr[m], h.group, h.queries) for m in METHODS}
    by_group = {m: {str(g): part for g, part in sets[m].groupby("group_name")} for m in METHODS}
    offset = len(h.prompts)  # the edited queries' steps come first
    for j, qid in enumerate(h.queries):
        if f"{qid}{HELD_HITS}" not in done:
            neuron_sets = [by_group[m].get(h.group[qid]) for m in METHODS]
            answer, hits = _held_out_query(h.lm, h.sites, h.stems, h.prompts[qid], h.before[qid], neuron_sets)
            done[f"{qid}{HELD_ANSWER}"], done[f"{qid}{HELD_HITS}"] = answer, hits
            save()
        step(offset + j + 1, f"held out {qid}")
    acts = np.stack([done[f"{qid}{HELD_ANSWER}"] for qid in h.queries])  # (held, layers, neurons)
    truth = [h.group[q] for q in h.queries]
    rows = [
        EvaluationRow(
            method, "group_prediction", "all", "accuracy", analysis.group_prediction(sets[method], acts, truth).accuracy
        )
        for method in METHODS
    ]
    hits = [
        (h.group[qid], method, right, prompt_right, chance)
        for qid in h.queries
        for prompt_right, chance, *rights in done[f"{qid}{HELD_HITS}"]
        for method, right in zip(METHODS, rights)
    ]  # one per held-out template and method
    frame = pd.DataFrame(hits, columns=["group_name", "method", "accuracy", "prompt_accuracy", "chance"])
    for (g, method), part in [
        *frame.groupby(["group_name", "method"]),
        *((("all", m), p) for m, p in frame.groupby("method")),
    ]:
        rows += [
            EvaluationRow(str(method), "answer_prediction", str(g), metric, float(part[metric].mean()))
            for metric in ("accuracy", "prompt_accuracy", "chance")
        ]
    return rows


def _held_out_query(
    lm: LoadedModel,
    sites: list[FFNSite],
    stems: Sequence[PromptStem | None],
    prompts: list[ChoicePrompt],
    before: np.ndarray,
    neuron_sets: list[pd.DataFrame | None],
) -> tuple[np.ndarray, np.ndarray]:
    """A held-out query's activations at the answer position, mean over its templates (layers, neurons), and per
    template whether its prompt and each method's neuron set (None: the group has none) pick the right option, beside
    chance: (templates, 2 + methods) rows of prompt-right, chance, then each method's right (NaN without a set)."""
    answers, hits = [], []
    activations = held_out_activations(lm, sites, prompts, prefix_cache(lm, prompts, stems))
    for prompt, probs, (answer, options) in zip(prompts, before, activations):
        answers.append(answer)  # (layers, neurons); options: (options, layers, neurons)
        picks = [
            np.nan if n is None else float(analysis.answer_prediction(n, options) == prompt.correct)
            for n in neuron_sets
        ]
        hits.append([float(np.nanargmax(probs) == prompt.correct), 1 / len(prompt.letters), *picks])
    return np.mean(answers, axis=0), np.array(hits)
