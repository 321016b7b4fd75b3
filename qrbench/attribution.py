"""`qrn bench attribution`: the fast path, the preview and the oracle on the same prompts, in one process, against the
machine's measured matmul peak."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
import platform
import resource
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.oracle import ig_prompt_oracle
from qrcore.attribution.results import QueryAttribution
from qrcore.data.prompts import ChoicePrompt
from qrcore.errors import QRNError
from qrcore.model.flops import ModelShape, ig_prompt_flops, matmul_peak
from qrcore.model.spec import LoadedModel
from qrcore.selection import qrnca
from qrcore.selection.stability import stability
from qrcore.selection.topk import top_neurons
from qrcore.settings import GRADIENT_X_ACTIVATION, AttributionSettings, QRNCASettings


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_attribution(lm: LoadedModel, n_queries: int = 2, oracle_prompts: int = 1, steps: int = 16) -> dict:
    """Time the fast path and the gradient x activation preview on n_queries built-in queries, and the oracle on the
    first oracle_prompts of their prompts (0: none; it takes minutes a prompt on a 1.5B model).

    The fast path is timed prompt by prompt and as a run computes a query (`attribute`: the prompts' prefixes in one
    forward, from template stems). Each path is reported per query (templates x seconds per prompt) with the model FLOPs of a query
    (`qrcore.model.flops`), the rate achieved and that rate as a share of the matmul peak measured here in the same dtype
    and thread count; the oracle with its ratio and agreement, the preview with its top-20 overlap with IG.
    """
    from qrcore.data.datasets import load_builtin

    attr = NeuronAttribution(lm, AttributionSettings(steps=steps))
    preview = NeuronAttribution(lm, GRADIENT_X_ACTIVATION)
    domain = load_builtin("domain")
    in_run = NeuronAttribution(lm, AttributionSettings(steps=steps), stems_for=domain)  # as qrn run
    queries = domain[:n_queries]
    per_query = [attr.prompts(q) for q in queries]
    prompts = [p for ps in per_query for p in ps]
    templates = attr.prompt_settings.templates
    shape = ModelShape.of(lm.model)
    dtype = next(lm.model.parameters()).dtype
    peaks = [matmul_peak(dtype, lm.device)]
    attr.ig_prompt(prompts[0])  # warm-up
    fast_s, fast_ig = timed(attr.ig_prompt, prompts)
    fast_mem = peak_memory_mib(lm.device)
    start = time.perf_counter()
    run_ig = [t for q in queries for t in in_run.attribute(q).ig]  # per prompt (layers, neurons)
    run_s = (time.perf_counter() - start) / n_queries
    preview_s, preview_ig = timed_batches(preview.gradient_x_activation, per_query)
    peaks.append(matmul_peak(dtype, lm.device))  # read again: the machine's speed drifts, the higher reading counts
    peak = max(peaks)
    oracle_s, oracle_ig = timed(lambda p: (ig_prompt_oracle(lm, p, attr.settings),), prompts[:oracle_prompts])
    work = {
        "fast": float(np.mean([ig_prompt_flops(shape, len(p.input_ids), steps) for p in prompts])),
        "preview": float(np.mean([ig_prompt_flops(shape, len(p.input_ids), 1, at_clean_point=True) for p in prompts])),
    }
    work["oracle"] = work["fast"]  # the same attribution: its rate counts the useful work, not what it repeats
    row = {
        "peak_gflops": peak / 1e9,
        "fast_peak_mib": fast_mem,
        "preview_top20_overlap": float(np.mean([top_overlap(a, b, 20) for a, b in zip(preview_ig, fast_ig)])),
    }
    print(
        f"model {lm.spec.name} ({len(attr.sites)} layers x {attr.sites[0].n_neurons} neurons), {templates} templates, "
        f"m={steps}, {dtype}, {torch.get_num_threads()} threads, device {lm.device}; "
        f"measured matmul peak {peak / 1e9:,.0f} GFLOP/s (read before and after the fast path and preview: "
        f"{peaks[0] / 1e9:,.0f}, {peaks[1] / 1e9:,.0f})"
    )
    for name, seconds in (("fast", fast_s), ("preview", preview_s), ("oracle", oracle_s)):
        if not seconds:
            continue
        per_query = templates * float(np.mean(seconds))
        rate = work[name] / float(np.mean(seconds))
        row |= {
            f"{name}_s_per_query": per_query,
            f"{name}_gflop_per_query": templates * work[name] / 1e9,
            f"{name}_gflops": rate / 1e9,
            f"{name}_peak_share": rate / peak,
        }
        print(
            f"{name:8s} {per_query:9.2f} s/query  {templates * work[name] / 1e9:9.1f} GFLOP/query  "
            f"{rate / 1e9:8.1f} GFLOP/s  {rate / peak:6.1%} of peak   ({len(seconds)} prompts timed)"
        )
    row |= {
        "run_s_per_query": run_s,
        "run_speedup": row["fast_s_per_query"] / run_s,
        "run_max_rel_diff": max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(run_ig, fast_ig)),
    }
    print(
        f"in a run {run_s:9.2f} s/query  (a query's prefixes in one forward, continued from the domain set's template "
        f"stems: {row['run_speedup']:.2f}x the fast path; max |difference| / max |fast| {row['run_max_rel_diff']:.1e})"
    )
    print(
        f"fast path peak memory {fast_mem:,.0f} MiB; preview top-20 overlap with IG {row['preview_top20_overlap']:.2f}"
    )
    if oracle_s:
        row["ratio"] = row["oracle_s_per_query"] / row["fast_s_per_query"]
        row["max_rel_diff"] = max(
            float(np.abs(ig - ref).max() / np.abs(ref).max()) for ig, ref in zip(fast_ig, oracle_ig)
        )
        print(f"ratio oracle/fast: {row['ratio']:.1f}x   max |fast - oracle| / max |oracle|: {row['max_rel_diff']:.2e}")
    return row


def timed(run: Callable[[ChoicePrompt], tuple], prompts: list[ChoicePrompt]) -> tuple[list[float], list[np.ndarray]]:
    """Seconds of `run` on each prompt and the first item of each result (the prompt's IG)."""
    return timed_batches(lambda batch: [run(batch[0])], [[p] for p in prompts])


def timed_batches(
    run: Callable[[list[ChoicePrompt]], list[tuple]], batches: list[list[ChoicePrompt]]
) -> tuple[list[float], list[np.ndarray]]:
    """`timed` for a path that takes a query's prompts together: each batch's seconds spread evenly over its prompts."""
    seconds, results = [], []
    for batch in batches:
        start = time.perf_counter()
        results += [r[0] for r in run(batch)]
        seconds += [(time.perf_counter() - start) / len(batch)] * len(batch)
    return seconds, results


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the k highest-scoring neurons of `a` that are among the k highest of `b` (both (layers, neurons))."""
    top = {(l, n) for l, n, _ in top_neurons(a, k)}
    return len(top & {(l, n) for l, n, _ in top_neurons(b, k)}) / k


def agreement(
    exact: list[QueryAttribution], mixed: list[QueryAttribution], groups: Mapping[str, str], s: QRNCASettings
) -> dict[str, float]:
    """How far mixed precision moves the results: mean Jaccard of the queries' coarse clusters and of their QR
    neurons (QRNCA over the same queries each way, `qrcore.selection.stability`), and the largest score difference
    relative to the largest score."""

    def rows(attrs: list[QueryAttribution]) -> pd.DataFrame:
        return pd.concat([qrnca.sparsify(a, s) for a in attrs], ignore_index=True)

    moved = stability(rows(exact), {"mixed": rows(mixed)}, groups, s).queries
    return {
        "cluster_jaccard": float(moved["cluster_jaccard"].mean()),
        "qr_jaccard": float(moved["qr_jaccard"].mean()),
        "max_rel_diff": max(float(np.abs(m.ig - e.ig).max() / np.abs(e.ig).max()) for e, m in zip(exact, mixed)),
    }


def bench_precision(lm: LoadedModel, per_group: int = 5, steps: int = 16, save: bool = False) -> dict:
    """Exact against mixed precision (`qrcore.attribution.precision`) on per_group built-in domain queries of each group: seconds
    per query each way, their ratio, and the agreement of coarse clusters, QR neurons and scores; `save` records the
    agreement as the model's (`qrcore.attribution.live_rule`), which the query lab's choice of bfloat16 reads."""
    from qrcore.attribution.live_rule import LIVE_RULES, Bf16Agreement, save_bf16_agreement
    from qrcore.attribution.precision import matmul_peaks
    from qrcore.data.datasets import load_builtin
    from qrcore.model.interventions import bfloat16_matmuls
    from qrcore.runs.batch import select_queries

    fp32, bf16 = matmul_peaks(lm.device)
    print(f"matmul peak here: float32 {fp32 / 1e9:,.0f} GFLOP/s, bfloat16 {bf16 / 1e9:,.1f} GFLOP/s")
    if bf16 < fp32:
        raise QRNError(
            f"bfloat16 products run at {bf16 / 1e9:,.1f} GFLOP/s on this {lm.device.type} against "
            f"{fp32 / 1e9:,.0f} in float32 (no AMX or AVX-512 BF16 here), so mixed precision cannot be "
            "faster; run `qrn bench precision` on a CPU with AMX or on a GPU."
        )
    attr = NeuronAttribution(lm, AttributionSettings(steps=steps))
    queries = select_queries(load_builtin("domain"), None, per_group)
    attr.attribute(queries[0])  # warm-up
    exact, mixed = [attr.attribute(q) for q in queries], []
    with bfloat16_matmuls(lm.model):
        attr.attribute(queries[0])
        mixed = [attr.attribute(q) for q in queries]
    row = agreement(exact, mixed, {q.id: q.group for q in queries}, QRNCASettings())
    row |= {
        "exact_s_per_query": float(np.mean([a.seconds for a in exact])),
        "mixed_s_per_query": float(np.mean([a.seconds for a in mixed])),
    }
    row["speedup"] = row["exact_s_per_query"] / row["mixed_s_per_query"]
    print(f"model {lm.spec.name}, {len(queries)} built-in queries, m={steps}, {torch.get_num_threads()} threads")
    print(
        f"exact {row['exact_s_per_query']:.2f} s/query   mixed {row['mixed_s_per_query']:.2f} s/query   "
        f"speed-up {row['speedup']:.2f}x"
    )
    print(
        f"mean Jaccard against exact: coarse clusters {row['cluster_jaccard']:.3f}, QR neurons {row['qr_jaccard']:.3f}; "
        f"largest score difference {row['max_rel_diff']:.2%} of the largest score"
    )
    if save:
        measured = (
            f"qrn bench precision --model {lm.spec.name} --per-group {per_group}, {len(queries)} built-in queries, "
            f"m={steps}, on {device_name(lm.device)}"
        )
        save_bf16_agreement(lm.spec.name, Bf16Agreement(row["qr_jaccard"], row["cluster_jaccard"], measured))
        print(f"saved as {lm.spec.name}'s bfloat16 agreement in {LIVE_RULES}")
    return row


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name as /proc/cpuinfo gives it (platform.processor() elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")]
    return names[0] if names else platform.processor() or "an unnamed CPU"


def bench_top_down(lm: LoadedModel, n_queries: int = 2, block: int | None = None) -> dict:
    """The query lab's results as they come, timed as the lab computes a custom question (the model's live rule, and
    bfloat16 products where `measured_bf16_choice` picks them): per query, the seconds to the first partial result and
    to the full one in the same top-down run, against `attribute()` on the same query in the same process; and the
    top-20 overlap of the first partial result with the full one. `block`: layers per block (default the lab's,
    `live_block`)."""
    from qrcore.attribution.ig import live_block
    from qrcore.attribution.live_rule import label, live_rule
    from qrcore.attribution.precision import chosen_precision, measured_bf16_choice
    from qrcore.data.datasets import load_builtin
    from qrcore.runs.batch import select_queries

    rule, bf16 = live_rule(lm.spec.name), measured_bf16_choice(lm.spec.name, lm.device)
    attr = NeuronAttribution(lm, rule.settings)
    block = block or live_block(len(attr.sites))
    queries = select_queries(load_builtin("domain"), None, max(1, n_queries // 6 + 1))[:n_queries]
    whole, first, last, overlap = [], [], [], []
    with chosen_precision(lm.model, bf16.use):
        attr.attribute(queries[0])  # warm-up
        for q in queries:
            start = time.perf_counter()
            full = attr.attribute(q)
            whole.append(time.perf_counter() - start)
            start = time.perf_counter()
            parts = attr.attribute_top_down(q, block)
            head = next(parts)
            first.append(time.perf_counter() - start)
            *_, tail = parts
            last.append(time.perf_counter() - start)
            overlap.append(float(np.mean([top_overlap(p, w, 20) for p, w in zip(head.attribution.ig, full.ig)])))
    row = {
        "attribute_s": float(np.mean(whole)),
        "first_block_s": float(np.mean(first)),
        "top_down_s": float(np.mean(last)),
        "first_share": float(np.mean(first) / np.mean(last)),
        "first_block_top20_overlap": float(np.mean(overlap)),
    }
    print(
        f"model {lm.spec.name}, {len(queries)} built-in queries, {label(rule.settings)} ({rule.why}); {bf16.why}; "
        f"blocks of {block} layers from the top, {torch.get_num_threads()} threads, {device_name(lm.device)}"
    )
    print(
        f"first partial result (layers {head.layers.start}-{head.layers.stop - 1}) {row['first_block_s']:.2f} s/query; "
        f"full result in the same top-down run {row['top_down_s']:.2f} s/query: the first partial at "
        f"{row['first_share']:.1%} of the full time; attribute() alone {row['attribute_s']:.2f} s/query"
    )
    print(
        f"top-20 neurons of the first partial result per template overlap the full result's by {row['first_block_top20_overlap']:.2f}"
    )
    return row
