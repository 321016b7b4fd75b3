"""Every intervention on a model's forward pass, in one place (as TransformerLens keeps its hook points): each is a
context manager that changes the model only inside its block and undoes it in `finally`, also when the forward raises.

- `forward_hooks`: the primitive, (module, hook) pairs registered for the block.
- `patch_ffn`: f (the attributed FFN activation, `qrcore.model.ffn`) of chosen layers replaced by fn(layer, f).
- `scaled`: the one way to edit neurons, a list of `Scale(layer, neuron, multiplier, position)`: at layer l and
  sequence position p, f of neuron i times m (0 replaces it by zero); the paper's boost and suppress (Sec. 5).
- `enter_at_layer`: packed IG copies that join the forward only at the layer they patch (the attribution's fast path).
- `packed_attention`: attention runs `packed_attention_forward`, the O(n) kernel for a `packed_mask`.
- `bfloat16_matmuls`: every Linear multiplies in bfloat16 and returns float32.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
import torch.nn.functional as F

from qrcore.model.ffn import ActivationFn, FFNSite, ffn_sites

if TYPE_CHECKING:
    from transformers import PreTrainedModel

LAST = -1
"""`Scale.position` of the last position of every forward: the answer position, and each generated token's."""


@dataclass(frozen=True)
class Scale:
    """At decoder layer `layer` and sequence position `position` (`LAST` by default), f of FFN neuron `neuron` is
    multiplied by `multiplier` in every row of the batch."""

    layer: int
    neuron: int
    multiplier: float
    position: int = LAST

    def __post_init__(self) -> None:
        if self.layer < 0 or self.neuron < 0:
            raise ValueError(f"a Scale needs a layer and neuron of at least 0, not {self.layer}:{self.neuron}")
        if not math.isfinite(self.multiplier):
            raise ValueError(f"a Scale's multiplier must be finite, not {self.multiplier}")
        if self.position < LAST:
            raise ValueError(f"a Scale's position is {LAST} (the last) or at least 0, not {self.position}")


@contextmanager
def scaled(model: nn.Module, scales: Sequence[Scale], sites: list[FFNSite] | None = None) -> Iterator[None]:
    """Within the block, every forward multiplies f at each `Scale`'s layer, position and neuron (positions beyond a
    forward's length, as in generation steps with a cache, are skipped there). A (position, neuron) given twice in a
    layer keeps the later multiplier."""
    sites = sites or ffn_sites(model)
    by_layer: dict[int, list[Scale]] = defaultdict(list)
    for s in scales:
        by_layer[s.layer].append(s)
    tables = {}  # layer -> (positions, neurons, multipliers), each (edits,) on that layer's device, made once
    for layer, part in by_layer.items():
        device = next(sites[layer].module.parameters()).device
        tables[layer] = tuple(
            torch.tensor([getattr(s, name) for s in part], device=device)
            for name in ("position", "neuron", "multiplier")
        )

    def apply(layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (batch, seq, neurons)
        positions, neurons, mults = tables[layer]
        inside = (positions < f.shape[1]) & (positions >= -f.shape[1])  # (edits,)
        positions, neurons, mults = positions[inside], neurons[inside], mults[inside]
        out = f.clone()
        out[:, positions, neurons] = out[:, positions, neurons] * mults.to(f.dtype)  # (batch, edits)
        return out

    with patch_ffn(model, apply, layers=sorted(tables), sites=sites):
        yield


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]], pre: bool = False) -> Iterator[None]:
    """Within the block, each (module, hook) is registered: a forward hook, or with `pre` a forward pre-hook that
    also receives the keyword arguments. All are removed in `finally`, also when the forward raises."""
    handles = []
    try:
        for module, hook in hooks:
            if pre:
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch_ffn(
    model: nn.Module, fn: ActivationFn, layers: list[int] | None = None, sites: list[FFNSite] | None = None
) -> Iterator[list[FFNSite]]:
    """Within the block, every forward replaces f of the chosen layers by fn(layer, f).

    Hooks are removed in `finally`, also when the forward raises.
    """
    sites = sites or ffn_sites(model)
    chosen = sites if layers is None else [sites[i] for i in layers]

    def make_hook(site: FFNSite):
        def hook(_module, _inputs, output):
            f = output[..., site.offset : site.offset + site.n_neurons]  # (batch, seq, neurons)
            new = fn(site.layer, f)
            if new is f:
                return None
            if site.offset == 0 and site.n_neurons == output.shape[-1]:
                return new
            return torch.cat([output[..., : site.offset], new, output[..., site.offset + site.n_neurons :]], dim=-1)

        return hook

    with forward_hooks((site.module, make_hook(site)) for site in chosen):
        yield sites


PACKED = "qrn_packed"
"""The name under which `packed_attention_forward` is registered with transformers' AttentionInterface."""


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of n packed rows under a `packed_mask` mask: each row sees the cached prefix and only itself.

    Generic attention scores every row against every packed row and masks all but one, O(n^2); here each row's own
    key is one dot product, O(n). The prefix part keeps the mask (several prefixes, sliding windows).
    """
    b, heads, n, d = query.shape
    kv_heads, p = key.shape[1], key.shape[2] - n
    q = query.reshape(b, kv_heads, heads // kv_heads, n, d)  # (b, kv heads, group, n, d)
    k_pre, k_own = key[:, :, None, :p], key[:, :, None, p:]  # (b, kv heads, 1, P | n, d)
    v_pre, v_own = value[:, :, None, :p], value[:, :, None, p:]
    mask = attention_mask[:, :, None]  # (b | 1, 1, 1, n, P + n)
    scale: float = d**-0.5 if scaling is None else scaling
    pre = (q @ k_pre.transpose(-1, -2)) * scale + mask[..., :p]  # (b, kv heads, group, n, P)
    own = (q * k_own).sum(-1, keepdim=True) * scale + mask[..., p:].diagonal(dim1=-2, dim2=-1)[..., None]
    w = torch.cat([pre, own], dim=-1).softmax(-1, dtype=torch.float32).to(query.dtype)  # (b, kv heads, group, n, P + 1)
    out = w[..., :p] @ v_pre + w[..., p:] * v_own  # (b, kv heads, group, n, d)
    return out.reshape(b, heads, n, d).transpose(1, 2), None  # (b, n, heads, d)


@contextmanager
def packed_attention(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, the model's attention layers run `packed_attention_forward`; restored in `finally`.

    Only for forwards whose mask is a `packed_mask`. Models whose attention has logit soft-capping or sinks keep theirs.
    """
    from transformers import AttentionInterface  # here, not at the top: it loads transformers' model registry

    AttentionInterface.register(PACKED, packed_attention_forward)
    config = model.config
    if getattr(config, "attn_logit_softcapping", None) or any(hasattr(m, "sinks") for m in model.modules()):
        yield
        return
    before = config._attn_implementation
    try:
        config._attn_implementation = PACKED
        yield
    finally:
        config._attn_implementation = before


@contextmanager
def bfloat16_matmuls(model: torch.nn.Module) -> Iterator[None]:
    """Every nn.Linear of `model` computes in bfloat16 and returns float32 while inside; restored in `finally`."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        for m in linears:
            weight = m.weight.detach().to(torch.bfloat16)  # (out, in)
            bias = None if m.bias is None else m.bias.detach().to(torch.bfloat16)  # (out,)
            setattr(m, "forward", lambda x, w=weight, b=bias: F.linear(x.to(torch.bfloat16), w, b).float())
        yield
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)


def _shrink(value, n: int, prefix: int, rows: int):
    """Cut a decoder layer's argument from n packed copies to the first `rows`: masks, positions, rotary tables."""
    if isinstance(value, (tuple, list)):
        return type(value)(_shrink(v, n, prefix, rows) for v in value)
    if isinstance(value, dict):
        return {k: _shrink(v, n, prefix, rows) for k, v in value.items()}
    if not isinstance(value, torch.Tensor):
        return value
    if value.ndim == 4 and tuple(value.shape[-2:]) == (n, prefix + n):
        return value[..., :rows, : prefix + rows]  # attention mask
    if value.ndim <= 2 and value.shape[-1] == n:
        return value[..., :rows]  # position ids, cache positions
    if value.ndim == 3 and value.shape[1] == n:
        return value[:, :rows]  # rotary cos / sin
    return value


@contextmanager
def enter_at_layer(blocks: torch.nn.ModuleList, h0: torch.Tensor, chunk: range, steps: int, prefix: int):
    """Copies patched at layer l join the packed sequence only at layer l, from the clean residual h0[l].

    Below l they would equal the clean run, so computing them there is wasted work; this halves the cost.
    Rows stay ordered by patch layer, so layer l sees the copies of layers a..l, its own m copies last.
    """
    a, b, n = chunk.start, chunk.stop, len(chunk) * steps

    def make_hook(k: int):
        def hook(_module, args, kwargs):
            in_args = bool(args)
            hidden = args[0] if in_args else kwargs["hidden_states"]  # (1, rows in, hidden)
            kept = hidden[:, : max(0, min(k, b) - a) * steps]
            if k < b:  # below the chunk: a stand-in block of clean rows, dropped at layer a
                kept = torch.cat([kept, h0[k].expand(1, steps, -1)], dim=1)
            rows = kept.shape[1]
            rest = tuple(_shrink(v, n, prefix, rows) for v in args[1:])
            kwargs = {k2: _shrink(v, n, prefix, rows) for k2, v in kwargs.items() if k2 != "hidden_states"}
            if in_args:
                return (kept, *rest), kwargs
            return rest, {**kwargs, "hidden_states": kept}

        return hook

    with forward_hooks(((block, make_hook(k)) for k, block in enumerate(blocks)), pre=True):
        yield
