"""Every hook the engine registers is removed when its context ends, also when the forward inside raises."""

import pytest
import torch

from qrcore.editing.scaling import edited
from qrcore.model.ffn import decoder_layers
from qrcore.model.interventions import (
    PACKED,
    Scale,
    enter_at_layer,
    forward_hooks,
    packed_attention,
    patch_ffn,
    scaled,
)


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
        "scaled": lambda: scaled(lm.model, [Scale(0, 1, 0.0, position=1)]),
        "enter_at_layer": lambda: enter_at_layer(blocks, h0, range(0, 1), steps=2, prefix=3),
    }


@pytest.mark.parametrize("name", ["patch_ffn", "forward_hooks", "edited", "scaled", "enter_at_layer"])
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


def _f(lm, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """f of `layer` at every position of one forward of `ids` (under whatever intervention is active)."""
    seen = {}

    def record(at: int, f: torch.Tensor) -> torch.Tensor:
        if at == layer:
            seen["f"] = f.detach().clone()  # (1, seq, neurons)
        return f

    with torch.no_grad(), patch_ffn(lm.model, record):
        lm.model(ids)
    return seen["f"][0]  # (seq, neurons)


def test_scaled_multiplies_f_at_its_layer_position_and_neuron_only(tiny):
    lm = tiny("llama")
    ids = torch.tensor([[1, 2, 3, 4]])
    with scaled(lm.model, [Scale(0, 5, 0.0, position=1), Scale(0, 7, 3.0)]):  # 7: at the last position
        f = _f(lm, 0, ids)  # layer 0's f comes before any change downstream
    clean = _f(lm, 0, ids)
    assert f[1, 5] == 0 and clean[1, 5] != 0
    assert torch.allclose(f[3, 7], 3 * clean[3, 7])
    changed = (f != clean).nonzero().tolist()
    assert changed == [[1, 5], [3, 7]]


def test_scaled_skips_positions_beyond_a_short_forward(tiny):
    """A generation step with a cache runs one position: a Scale at position 2 does not apply there, LAST does."""
    lm = tiny("llama")
    one = torch.tensor([[1]])
    with scaled(lm.model, [Scale(0, 5, 0.0, position=2), Scale(0, 6, 0.0)]):
        f = _f(lm, 0, one)
    clean = _f(lm, 0, one)
    assert f[0, 5] == clean[0, 5] and f[0, 6] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 1.0), "layer and neuron of at least 0, not -1:0"),
        ((0, 0, float("nan")), "multiplier must be finite, not nan"),
        ((0, 0, 1.0, -2), "position is -1 \\(the last\\) or at least 0, not -2"),
    ],
)
def test_a_scale_checks_its_values(args, message):
    with pytest.raises(ValueError, match=message):
        Scale(*args)
