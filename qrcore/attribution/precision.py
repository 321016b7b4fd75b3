"""Mixed precision for the attribution (issue 10): matrix products in bfloat16, everything else in float32.

Inside `bfloat16_matmuls(model)` every `nn.Linear` multiplies bfloat16 copies of its input and weight (AMX on CPUs
that have it, tensor cores on GPUs; both accumulate in float32) and hands a float32 result on, so the residual
stream, norms, soft-max and the IG sums stay float32. It is a different result from the exact path, so it is not a
run setting until its agreement with the exact path on the built-in queries reaches the bar (`qrn bench precision`).

The query lab uses it automatically (`choose_bf16`) where both hold: the machine's measured bfloat16 matmul peak is
well above its float32 peak (AMX or AVX-512 BF16 on CPUs, tensor cores on GPUs), and the model's measured agreement
with float32 meets the live criterion (`qrcore.attribution.live_rule`); elsewhere it stays off and says why.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from qrcore.attribution.live_rule import LIVE_JACCARD, Bf16Agreement, bf16_agreement
from qrcore.model.flops import matmul_peak
from qrcore.model.interventions import bfloat16_matmuls

BF16_SPEEDUP = 1.5
"""bfloat16 products are used only where their measured peak is at least this many times the float32 peak."""


@dataclass(frozen=True)
class Bf16Choice:
    """Whether the live attribution multiplies in bfloat16, and the one line saying why."""

    use: bool
    why: str


def choose_bf16(fp32_peak: float, bf16_peak: float, agreement: Bf16Agreement | None, model: str) -> Bf16Choice:
    """bfloat16 products where the bfloat16 peak is at least BF16_SPEEDUP x the float32 peak (FLOP/s) and the model's
    QR neurons under them matched float32's with a mean Jaccard of at least LIVE_JACCARD; float32 otherwise."""
    ratio = bf16_peak / fp32_peak
    peaks = f"bfloat16 matmul peak {bf16_peak / 1e9:,.0f} GFLOP/s = {ratio:.1f}x float32's {fp32_peak / 1e9:,.0f}"
    if ratio < BF16_SPEEDUP:
        return Bf16Choice(False, f"float32 products: {peaks} here, under the {BF16_SPEEDUP}x that would pay")
    if agreement is None:
        return Bf16Choice(False, f"float32 products: {peaks}, but bfloat16's agreement was never measured for {model}")
    jaccard = f"{model}'s QR neurons under bfloat16 match float32's with a mean Jaccard of {agreement.qr_jaccard:.3f}"
    if agreement.qr_jaccard < LIVE_JACCARD:
        return Bf16Choice(False, f"float32 products: {peaks}, but {jaccard} < {LIVE_JACCARD} ({agreement.measured})")
    return Bf16Choice(True, f"bfloat16 products: {peaks}, and {jaccard} >= {LIVE_JACCARD} ({agreement.measured})")


def matmul_peaks(device: torch.device) -> tuple[float, float]:
    """(float32, bfloat16) matmul peaks in FLOP/s measured now on `device` (a quick reading: 512 x 512 products)."""
    fp32, bf16 = (matmul_peak(dtype, device, size=512, repeats=2) for dtype in (torch.float32, torch.bfloat16))
    return fp32, bf16


def measured_bf16_choice(model: str, device: torch.device) -> Bf16Choice:
    """`choose_bf16` from the matmul peaks measured now on `device` and the model's stored agreement."""
    return choose_bf16(*matmul_peaks(device), bf16_agreement(model), model)


def chosen_precision(model: torch.nn.Module, bf16: bool):
    """`bfloat16_matmuls(model)` where `bf16`, else a block that changes nothing."""
    return bfloat16_matmuls(model) if bf16 else nullcontext()
