"""Every hook the engine registers is removed when its context ends, also when the forward inside raises."""

import pytest
import torch

from qrcore.attribution.ig import enter_at_layer
from qrcore.editing.scaling import edited
from qrcore.model.ffn import decoder_layers, forward_hooks, patch_ffn
from qrcore.model.forward import PACKED, packed_attention


def _hook_count(model: torch.nn.Module) -> int:
    """All forward and forward-pre hooks on any module of the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _raise(*_args, **_kwargs):
    raise RuntimeError("forward failed")


def _contexts(lm):
    blocks = decoder_layers(lm.model)
    h0 = torch.zeros(len(blocks), lm.model.config.hidden_size)
    return {
        "patch_ffn": lambda: patch_ffn(lm.model, lambda _l, f: f),
        "forward_hooks": lambda: forward_hooks(((b, _raise) for b in blocks), pre=True),
        "edited": lambda: edited(lm, {(0, 1): 2.0}),
        "enter_at_layer": lambda: enter_at_layer(blocks, h0, range(0, 1), steps=2, prefix=3),
    }


@pytest.mark.parametrize("name", ["patch_ffn", "forward_hooks", "edited", "enter_at_layer"])
def test_hooks_are_gone_after_a_forward_raises(tiny, name):
    lm = tiny("llama")
    before = _hook_count(lm.model)
    with pytest.raises(RuntimeError):
        with _contexts(lm)[name]():
            assert _hook_count(lm.model) > before
            with patch_ffn(lm.model, _raise):
                lm.model(torch.tensor([[1, 2, 3]]))
    assert _hook_count(lm.model) == before


def test_packed_attention_is_restored_after_a_forward_raises(tiny):
    lm = tiny("llama")
    before = lm.model.config._attn_implementation
    with pytest.raises(RuntimeError):
        with packed_attention(lm.model):
            assert lm.model.config._attn_implementation == PACKED
            with forward_hooks([(decoder_layers(lm.model)[0], _raise)], pre=True):
                lm.model(torch.tensor([[1, 2, 3]]))
    assert lm.model.config._attn_implementation == before


def test_packed_attention_leaves_soft_capped_attention_alone(tiny):
    """Attention with logit soft-capping (Gemma 2) keeps its own implementation: the packed one has no soft-cap."""
    lm = tiny("llama")
    before = lm.model.config._attn_implementation
    lm.model.config.attn_logit_softcapping = 50.0
    try:
        with packed_attention(lm.model):
            assert lm.model.config._attn_implementation == before
    finally:
        del lm.model.config.attn_logit_softcapping
