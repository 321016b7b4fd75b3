"""Mixed precision for the attribution (issue 10): matrix products in bfloat16, everything else in float32.

Inside `bfloat16_matmuls(model)` every `nn.Linear` multiplies bfloat16 copies of its input and weight (AMX on CPUs
that have it, tensor cores on GPUs; both accumulate in float32) and hands a float32 result on, so the residual
stream, norms, soft-max and the IG sums stay float32. It is a different result from the exact path, so it is not a
run setting until `agreement` on the built-in queries reaches the bar (`qrn bench precision`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from qrcore.attribution.results import QueryAttribution
from qrcore.selection import qrnca
from qrcore.settings import QRNCASettings


@contextmanager
def bfloat16_matmuls(model: torch.nn.Module) -> Iterator[None]:
    """Every nn.Linear of `model` computes in bfloat16 and returns float32 while inside; restored in `finally`."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        for m in linears:
            weight = m.weight.detach().to(torch.bfloat16)  # (out, in)
            bias = None if m.bias is None else m.bias.detach().to(torch.bfloat16)  # (out,)
            m.forward = lambda x, w=weight, b=bias: F.linear(x.to(torch.bfloat16), w, b).float()
        yield
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|, 1 for two empty sets."""
    return len(a & b) / len(a | b) if a | b else 1.0


def agreement(
    exact: list[QueryAttribution], mixed: list[QueryAttribution], groups: Mapping[str, str], s: QRNCASettings
) -> dict[str, float]:
    """How far mixed precision moves the results: mean Jaccard of the queries' coarse clusters and of their QR
    neurons (QRNCA over the same queries each way), and the largest score difference relative to the largest score."""

    def per_query(attrs: list[QueryAttribution]) -> tuple[dict[str, set], dict[str, set]]:
        sparse = pd.concat([qrnca.sparsify(a, s) for a in attrs], ignore_index=True)
        cluster = sparse.loc[sparse["in_cluster"]].groupby("query_id")
        qr = qrnca.qr_neurons(sparse, groups, s).groupby("query_id")
        return (
            {q: set(zip(p["layer"], p["neuron"])) for q, p in cluster},
            {q: set(zip(p["layer"], p["neuron"])) for q, p in qr},
        )

    (c_exact, q_exact), (c_mixed, q_mixed) = per_query(exact), per_query(mixed)
    ids = [a.query_id for a in exact]
    diff = max(float(np.abs(m.ig - e.ig).max() / np.abs(e.ig).max()) for e, m in zip(exact, mixed))
    return {
        "cluster_jaccard": float(np.mean([jaccard(c_exact.get(q, set()), c_mixed.get(q, set())) for q in ids])),
        "qr_jaccard": float(np.mean([jaccard(q_exact.get(q, set()), q_mixed.get(q, set())) for q in ids])),
        "max_rel_diff": diff,
    }
