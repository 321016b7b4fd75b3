"""`qrn bench attribution`: the fast path and the oracle on the same prompts, in one process."""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from qrcore.attribution import NeuronAttribution
from qrcore.models import LoadedModel
from qrcore.oracle import ig_prompt_oracle
from qrcore.settings import AttributionSettings


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_attribution(lm: LoadedModel, n_queries: int = 2, oracle_prompts: int = 1, steps: int = 16) -> dict:
    """Time the fast path on n_queries built-in queries and the oracle on the first oracle_prompts of their prompts.

    Both are reported per query (templates x seconds per prompt), with their ratio and agreement.
    """
    from qrcore.datasets import load_builtin

    attr = NeuronAttribution(lm, AttributionSettings(steps=steps))
    queries = load_builtin("domain")[:n_queries]
    prompts = [p for q in queries for p in attr.prompts(q)]
    templates = attr.prompt_settings.templates
    attr.ig_prompt(prompts[0])  # warm-up
    fast, fast_ig = [], []
    for p in prompts:
        t = time.perf_counter()
        fast_ig.append(attr.ig_prompt(p)[0])
        fast.append(time.perf_counter() - t)
    fast_mem = peak_memory_mib(lm.device)
    slow, errors = [], []
    for p, ig in zip(prompts[:oracle_prompts], fast_ig):
        t = time.perf_counter()
        ref = ig_prompt_oracle(lm, p, attr.settings)
        slow.append(time.perf_counter() - t)
        errors.append(float(np.abs(ig - ref).max() / np.abs(ref).max()))
    slow_mem = peak_memory_mib(lm.device)
    row = {"fast_s_per_query": templates * float(np.mean(fast)), "oracle_s_per_query": templates * float(np.mean(slow)),
           "fast_prompts": len(fast), "oracle_prompts": len(slow), "max_rel_diff": max(errors),
           "fast_peak_mib": fast_mem, "oracle_peak_mib": slow_mem}
    row["ratio"] = row["oracle_s_per_query"] / row["fast_s_per_query"]
    print(f"model {lm.spec.name} ({len(attr.sites)} layers x {attr.sites[0].n_neurons} neurons), "
          f"{templates} templates, m={steps}, {torch.get_num_threads()} threads, device {lm.device}")
    print(f"fast path: {row['fast_s_per_query']:8.2f} s/query  ({len(fast)} prompts timed)   peak {fast_mem:,.0f} MiB")
    print(f"oracle:    {row['oracle_s_per_query']:8.2f} s/query  ({len(slow)} prompts timed)   peak {slow_mem:,.0f} MiB")
    print(f"ratio oracle/fast: {row['ratio']:.1f}x   max |fast - oracle| / max |oracle|: {row['max_rel_diff']:.2e}")
    return row
