"""`qrn bench evaluation`: the evaluation's edits of a query (Tables 4 and 6) run one forward per edit and prompt set,
as before, against all of them packed into one forward (`letter_probs_under`) on all threads and on one, and a held-out
query's activations (Table 7) by plain whole-prompt forwards against one packed forward, on the same queries in one
process."""

from __future__ import annotations

import random
import time

import numpy as np
import torch

from qrcore.attribution.oracle import held_out_oracle, prefix_cache_oracle
from qrcore.attribution.prefixes import prefix_cache
from qrcore.data.prompts import ChoicePrompt
from qrcore.editing.scaling import (
    BOOST,
    SUPPRESS,
    letter_probs,
    letter_probs_under,
    one_thread,
)
from qrcore.evaluation.evaluate import held_out_activations
from qrcore.model.spec import LoadedModel
from qrcore.selection.qrnca import METHODS

NEURONS_PER_EDIT = 15
"""Neurons in each timed edit, about a query's QR neuron count."""


def bench_evaluation(lm: LoadedModel, n_queries: int = 4, seed: int = 0) -> dict:
    """Seconds per query of the evaluation's forwards done per edit and packed, their ratio and largest difference.

    Each query is edited with one random neuron set per method and edit kind (as many edits as the evaluation
    makes), read on its own prompts and on a control query's; the prefix keys/values are computed once for both
    ways and timed apart.
    """
    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.data.datasets import load_builtin

    attr = NeuronAttribution(lm)
    domain = load_builtin("domain")
    queries = domain[:: len(domain) // n_queries][:n_queries]
    sizes = [s.n_neurons for s in lm.sites]
    rng = random.Random(seed)

    def random_edit(mult: float) -> dict[tuple[int, int], float]:
        """NEURONS_PER_EDIT random neurons of random layers scaled by mult."""
        picks = [(layer := rng.randrange(len(sizes)), rng.randrange(sizes[layer])) for _ in range(NEURONS_PER_EDIT)]
        return {n: mult for n in picks}

    prompts = [attr.prompts(q) for q in queries]
    start = time.perf_counter()
    each = [prefix_cache_oracle(lm, p) for p in prompts]
    each_s = (time.perf_counter() - start) / n_queries
    start = time.perf_counter()
    caches = [prefix_cache(lm, p) for p in prompts]
    prefix_s = (time.perf_counter() - start) / n_queries
    start = time.perf_counter()
    stems = attr.template_stems(queries)
    stems_s = time.perf_counter() - start
    start = time.perf_counter()
    stemmed = [prefix_cache(lm, p, stems) for p in prompts]
    stemmed_s = (time.perf_counter() - start) / n_queries
    prefix_diff = max(
        float((a - b).abs().max())
        for ways, ref in zip(zip(caches, stemmed), each)
        for way in ways
        for layer, ref_layer in zip(way.kv, ref.kv)
        for a, b in zip(layer, ref_layer)
    )  # largest difference of a key or value from the oracle's
    edits = [[random_edit(m) for _ in METHODS for m in (BOOST, SUPPRESS)] for _ in queries]
    pairs = [(i, (i + 1) % n_queries) for i in range(n_queries)]  # (query, its control)
    letter_probs(lm, prompts[0], edits[0][0], caches[0])  # warm-up
    start = time.perf_counter()
    one_by_one = [
        np.stack(
            [
                np.concatenate([letter_probs(lm, prompts[q], e, caches[q]), letter_probs(lm, prompts[c], e, caches[c])])
                for e in [{}, *edits[q]]
            ]
        )
        for q, c in pairs
    ]  # per query (1 + edits, 6 prompts, options)
    one_s = (time.perf_counter() - start) / n_queries

    def packed_pass() -> tuple[list[np.ndarray], float]:
        """Every query's edits packed into one forward each, and the seconds per query."""
        start = time.perf_counter()
        out = [
            letter_probs_under(lm, prompts[q] + prompts[c], caches[q] + caches[c], [{}, *edits[q]]) for q, c in pairs
        ]
        return out, (time.perf_counter() - start) / n_queries

    packed, packed_s = packed_pass()
    with one_thread(lm.device):
        packed_one, packed_one_s = packed_pass()
    diff = max(float(np.nanmax(np.abs(a - b))) for a, b in zip(one_by_one + packed_one, packed + packed))
    held_oracle, held_oracle_s = time_held_out_oracle(lm, prompts)
    start = time.perf_counter()
    held = [held_out_activations(lm, attr.sites, p, prefix_cache(lm, p, stems)) for p in prompts]
    held_s = (time.perf_counter() - start) / n_queries
    held_diff = max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for mine, ref in zip(held, held_oracle)
        for pair, ref_pair in zip(mine, ref)
        for a, b in zip(pair, ref_pair)
    )  # largest difference from the plain forwards' activations, relative to their scale
    rows = (1 + len(edits[0])) * 6
    print(
        f"model {lm.spec.name}, {n_queries} queries, {len(edits[0])} edits of {NEURONS_PER_EDIT} neurons each plus the "
        f"unedited prompts, read on the query's 3 prompts and its control's 3; {torch.get_num_threads()} threads"
    )
    shared = ", ".join(str(len(s.ids)) if s else "0" for s in stems)
    print(f"prefix keys/values, a forward per prompt {each_s:6.2f} s/query   (the oracle, how it ran before)")
    print(f"  the query's prompts in one forward     {prefix_s:6.2f} s/query   (speed-up {each_s / prefix_s:.2f}x)")
    print(
        f"  and continued from template stems      {stemmed_s:6.2f} s/query   (speed-up {each_s / stemmed_s:.2f}x; "
        f"the stems of {shared} tokens took {stems_s:.2f} s once)"
    )
    print(f"  max |difference| of a key or value from the oracle's: {prefix_diff:.1e}")
    print(f"one forward per edit    {one_s:7.2f} s/query   ({2 * (1 + len(edits[0]))} forwards of 3 positions)")
    print(f"all edits packed        {packed_s:7.2f} s/query   (1 forward of {rows} positions)")
    print(
        f"all edits packed, 1 thread{packed_one_s:5.2f} s/query   (as it ran before: {packed_one_s / packed_s:.2f}x all threads' time)"
    )
    print(f"ratio one-by-one/packed: {one_s / packed_s:.1f}x   max |difference| of a probability: {diff:.1e}")
    letters = sum(len(p.letter_ids) for p in prompts[0])
    print(
        f"held-out activations, whole-prompt forwards {held_oracle_s:6.2f} s/query   (the oracle: "
        f"{len(prompts[0]) + letters} forwards of whole prompts)"
    )
    print(
        f"  packed after the prefixes           {held_s:6.2f} s/query   (speed-up {held_oracle_s / held_s:.2f}x; "
        f"the prefixes, then 1 forward of {len(prompts[0]) + letters} positions)"
    )
    print(f"  max |difference| / max |oracle| of an activation: {held_diff:.1e}")
    return {
        "prefix_oracle_s": each_s,
        "prefix_s": prefix_s,
        "stemmed_prefix_s": stemmed_s,
        "prefix_diff": prefix_diff,
        "one_by_one_s": one_s,
        "packed_s": packed_s,
        "packed_one_thread_s": packed_one_s,
        "max_diff": diff,
        "held_oracle_s": held_oracle_s,
        "held_s": held_s,
        "held_diff": held_diff,
    }


def time_held_out_oracle(lm: LoadedModel, prompts: list[list[ChoicePrompt]]) -> tuple[list, float]:
    """`held_out_oracle` of every query's prompts, and the seconds per query."""
    start = time.perf_counter()
    out = [[held_out_oracle(lm, p) for p in query] for query in prompts]
    return out, (time.perf_counter() - start) / len(prompts)
