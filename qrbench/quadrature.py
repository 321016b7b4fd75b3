"""`qrn bench quadrature`: integration rules of Eq. 5 against a near-exact reference and against the authors' rule.

For built-in domain queries of a model's run, every rule's IG is computed in one process: the authors' rule
(linspace(0, 1, 16), equal weights), a 32-node Gauss-Legendre reference and cheaper candidates. Each rule gets its
seconds and model FLOPs per query, its integral error against the reference (L1 of the scores over L1 of the
reference's), and how far it moves the coarse clusters and QR neurons from the authors' rule, judged under the run's
ICA (`qrcore.selection.stability`). Beside them, the reference's own distance from the authors' rule: the noise floor
below which a cheaper rule changes nothing a reader can trust more. The live rule is the cheapest candidate whose
QR neurons match the authors' rule with a mean Jaccard of at least `LIVE_JACCARD`, or at least as well as the
reference does where that is lower.
"""

from __future__ import annotations

from dataclasses import dataclass
import time

import numpy as np
import pandas as pd
import torch

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.live_rule import AUTHORS, LIVE_JACCARD, LIVE_RULES, LiveRule, label, save_live_rule
from qrcore.errors import QRNError
from qrcore.model.flops import ModelShape, ig_prompt_flops
from qrcore.model.spec import LoadedModel
from qrcore.runs.batch import select_queries
from qrcore.selection import qrnca
from qrcore.selection.stability import stability
from qrcore.settings import AttributionSettings

REFERENCE = AttributionSettings(32, "gauss_legendre")
CANDIDATES = (
    AttributionSettings(4, "gauss_legendre"),
    AttributionSettings(6, "gauss_legendre"),
    AttributionSettings(8, "gauss_legendre"),
    AttributionSettings(12, "gauss_legendre"),
)


@dataclass(frozen=True)
class RuleRow:
    """One rule's cost and agreement on the benchmark's queries."""

    rule: str
    seconds: float
    """Mean seconds per query."""
    flops_share: float
    """Model FLOPs of a query under this rule over those under the authors' rule."""
    integral_error: float
    """Mean over queries of L1(IG - reference IG) / L1(reference IG)."""
    cluster_jaccard: float
    """Mean Jaccard of the queries' coarse clusters against the authors' rule, under the run's ICA."""
    qr_jaccard: float
    """The same for the QR neurons."""


def bench_quadrature(
    lm: LoadedModel, db: str | None, run: str | None = None, per_group: int = 10, save: bool = False
) -> pd.DataFrame:
    """The rules' table (one `RuleRow` each) on `per_group` queries of each group of a finished run of `lm` in `db`
    (default: its run of the built-in domain set); prints it and the live rule, which `save` records for the lab."""
    with store.connect(db, read_only=True) as con:
        info = _domain_run(con, lm) if run is None else _own_run(con, run, lm)
        base, _ = store.stored_rows(con, info.run_id)
        groups = store.run_groups(con, info.run_id)
        queries = [q for q in store.load_queries(con, store.run_dataset_id(con, info.run_id)) if q.id in groups]
    queries = select_queries(queries, None, per_group)
    s, shape = info.settings.qrnca, ModelShape.of(lm.model)
    rules = (AUTHORS, REFERENCE, *CANDIDATES)
    seconds, sparse, igs, flops = {}, {}, {}, {}
    for rule in rules:
        attr = NeuronAttribution(lm, rule, info.settings.prompt)
        attr.attribute(queries[0])  # warm-up
        start = time.perf_counter()
        results = [attr.attribute(q) for q in queries]
        seconds[rule] = (time.perf_counter() - start) / len(queries)
        sparse[rule] = pd.concat([qrnca.sparsify(r, s) for r in results], ignore_index=True)
        igs[rule] = [r.ig for r in results]
        prompts = [p for q in queries for p in attr.prompts(q)]
        flops[rule] = sum(ig_prompt_flops(shape, len(p.input_ids), rule.steps) for p in prompts)
    authors = pd.concat([base.loc[~base["query_id"].isin(sparse[AUTHORS]["query_id"])], sparse[AUTHORS]])
    rows = []
    for rule in rules:
        moved = stability(authors, {label(rule): sparse[rule]}, groups, s).queries
        error = np.mean([np.abs(a - r).sum() / np.abs(r).sum() for a, r in zip(igs[rule], igs[REFERENCE])])
        rows.append(
            RuleRow(
                label(rule),
                seconds[rule],
                flops[rule] / flops[AUTHORS],
                float(error),
                float(moved["cluster_jaccard"].mean()),
                float(moved["qr_jaccard"].mean()),
            )
        )
    table = pd.DataFrame(rows)
    print(
        f"model {lm.spec.name}, run {info.name}: {len(queries)} queries ({per_group} per group), "
        f"{torch.get_num_threads()} threads; Jaccard against {label(AUTHORS)} under the run's ICA"
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    rule = live_rule(table)
    print(f"live rule: {rule.why}")
    if save:
        save_live_rule(lm.spec.name, rule)
        print(f"saved as {lm.spec.name}'s live rule in {LIVE_RULES}")
    return table


def live_rule(table: pd.DataFrame) -> LiveRule:
    """The cheapest candidate that meets the live criterion, or the authors' rule; its `why` says what was measured."""
    floor = float(table.loc[table["rule"] == label(REFERENCE), "qr_jaccard"].iloc[0])
    bar = min(LIVE_JACCARD, floor)
    ok = table.loc[table["rule"].isin([label(c) for c in CANDIDATES]) & (table["qr_jaccard"] >= bar)]
    if ok.empty:
        return LiveRule(
            AUTHORS,
            f"the authors' rule ({label(AUTHORS)}): no cheaper rule's QR neurons match it with a mean Jaccard of "
            f"{bar:.3f}, the lower of {LIVE_JACCARD} and the 32-node reference's {floor:.3f}",
        )
    best = ok.sort_values("flops_share").iloc[0]
    riemann, steps = str(best["rule"]).split()
    return LiveRule(
        AttributionSettings(int(steps), riemann),
        f"{best['rule']} ({best['flops_share']:.0%} of the authors' FLOPs): its QR neurons match the authors' rule "
        f"with a mean Jaccard of {best['qr_jaccard']:.3f} >= {bar:.3f}, the lower of {LIVE_JACCARD} and the "
        f"32-node reference's {floor:.3f}",
    )


def _own_run(con, name: str, lm: LoadedModel) -> store.RunInfo:
    """The finished run `name`, computed by `lm` under the authors' rule; one line otherwise."""
    info = store.complete_run(con, name)
    store.require_model(info, lm.spec.name, lm.fingerprint)
    if info.settings.attribution != AUTHORS:
        raise QRNError(f"run {info.name!r} was computed with {label(info.settings.attribution)}, not the authors' rule")
    return info


def _domain_run(con, lm: LoadedModel) -> store.RunInfo:
    """The model's finished run of the built-in domain set under the authors' rule; one line saying how to get one."""
    runs = store.list_runs(con)
    for name in runs.loc[(runs["dataset"] == "domain") & (runs["status"] == "finished"), "name"]:
        info = store.run_info(con, name)
        if info.model_id == lm.fingerprint and info.settings.attribution == AUTHORS:
            return info
    raise QRNError(
        f"no finished run of {lm.spec.name} on the built-in domain set with the authors' rule in this store; "
        "load the shipped runs (qrn import qrcore/data/default_runs) or compute one (qrn run --dataset domain)."
    )
