"""Mixed precision for the attribution (issue 10): matrix products in bfloat16, everything else in float32.

Inside `bfloat16_matmuls(model)` every `nn.Linear` multiplies bfloat16 copies of its input and weight (AMX on CPUs
that have it, tensor cores on GPUs; both accumulate in float32) and hands a float32 result on, so the residual
stream, norms, soft-max and the IG sums stay float32. It is a different result from the exact path, so it is not a
run setting until its agreement with the exact path on the built-in queries reaches the bar (`qrn bench precision`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


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
