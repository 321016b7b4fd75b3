"""The packed attention equals generic attention under the packed mask it is made for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from qrcore.model.forward import packed_mask
from qrcore.model.interventions import packed_attention_forward


@pytest.mark.parametrize("window", [None, 3])
def test_packed_attention_matches_sdpa_under_a_packed_mask(window):
    """Two prefixes (5 and 4 positions), 6 packed rows of either, grouped-query heads (4 query heads on 2)."""
    torch.manual_seed(0)
    lengths, rows = [5, 4], [0, 1, 1, 0, 1, 0]
    config = SimpleNamespace(layer_types=["sliding_attention"] if window else None, sliding_window=window)
    mask = packed_mask(config, lengths, rows, torch.float32, torch.device("cpu"))
    mask = mask["sliding_attention"] if window else mask  # (1, 1, 6, 9 + 6)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    query = torch.randn(1, 4, 6, 8)  # (batch, heads, rows, head dim)
    key, value = torch.randn(1, 2, 15, 8), torch.randn(1, 2, 15, 8)  # (batch, kv heads, prefixes + rows, head dim)
    fast, _ = packed_attention_forward(module, query, key, value, mask, scaling=0.3)
    generic, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert fast.shape == generic.shape == (1, 6, 4, 8)
    assert torch.allclose(fast, generic, atol=1e-6)
