"""Mixed precision: bfloat16 products, float32 elsewhere; close to the exact path, and gone after the block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qrbench import attribution as bench
from qrcore.attribution.ig import NeuronAttribution
from qrcore.cli import main
from qrcore.data.queries import make_query
from qrcore.model.interventions import bfloat16_matmuls
from qrcore.settings import QRNCASettings

QUERIES = [
    make_query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris"),
    make_query("Which gas do plants take in?", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "Carbon dioxide"),
]


def test_each_product_is_of_bfloat16_operands_accumulated_in_float32(tiny):
    lm = tiny("llama")
    linear = lm.model.model.layers[0].mlp.up_proj
    x = torch.randn(5, linear.in_features, generator=torch.Generator().manual_seed(0))  # (tokens, hidden)
    with torch.no_grad(), bfloat16_matmuls(lm.model):
        rounded = x.bfloat16().float() @ linear.weight.bfloat16().float().T  # (tokens, neurons) the float32 oracle
        y = linear(x)  # (tokens, neurons)
    assert y.dtype == torch.float32
    # only the result's own rounding to bfloat16 (8 bits) remains: a bfloat16 accumulation would be far off
    np.testing.assert_allclose(y.numpy(), rounded.numpy(), rtol=2**-8, atol=2**-8 * float(rounded.abs().max()))
    with torch.no_grad():
        assert not torch.equal(y, x @ linear.weight.T)


@pytest.mark.integration  # full attributions in both precisions: seconds
def test_mixed_precision_stays_close_to_the_exact_path_and_leaves_it_as_it_was(tiny):
    # tiny gemma3: its random logits are far enough apart for bfloat16 rounding not to reorder them (tiny llama's
    # near-flat logits are not a fair case for any precision)
    lm = tiny("gemma3")
    attr = NeuronAttribution(lm)
    exact = [attr.attribute(q) for q in QUERIES]
    with bfloat16_matmuls(lm.model):
        mixed = [attr.attribute(q) for q in QUERIES]
    assert next(lm.model.parameters()).dtype == torch.float32  # the weights themselves are untouched
    result = bench.agreement(exact, mixed, {q.id: str(i) for i, q in enumerate(QUERIES)}, QRNCASettings())
    assert 1e-5 < result["max_rel_diff"] < 0.05  # bfloat16 products do change the scores, by little
    assert result["cluster_jaccard"] > 0.8 and result["qr_jaccard"] > 0.6
    again = [attr.attribute(q) for q in QUERIES]  # the exact path after the block: the same numbers as before it
    for before, after in zip(exact, again):
        np.testing.assert_allclose(after.ig, before.ig, rtol=1e-5, atol=1e-6 * np.abs(before.ig).max())


def test_linears_are_restored_when_the_forward_raises(tiny):
    lm = tiny("llama")
    with pytest.raises(RuntimeError), bfloat16_matmuls(lm.model):
        lm.model(torch.tensor([[1, 2, 3]]))
        raise RuntimeError("stop")
    assert not any("forward" in m.__dict__ for m in lm.model.modules())


def test_the_benchmark_says_when_bfloat16_cannot_be_faster_here(monkeypatch, capsys):
    peaks = {torch.float32: 300e9, torch.bfloat16: 0.3e9}  # this machine's kind: AVX2 only, bf16 on a scalar fallback
    monkeypatch.setattr("qrcore.attribution.precision.matmul_peak", lambda dtype, device, **_: peaks[dtype])
    assert main(["bench", "precision", "--model", "tiny-llama", "--per-group", "1"]) == 2
    assert capsys.readouterr().err == (
        "qrn: error: bfloat16 products run at 0.3 GFLOP/s on this cpu against 300 in float32 (no AMX or AVX-512 BF16 "
        "here), so mixed precision cannot be faster; run `qrn bench precision` on a CPU with AMX or on a GPU.\n"
    )
