"""Forward passes shared by the attribution, the editing and the evaluations: the clean pass that records f,
a prompt prefix's keys and values computed once, the 4D mask that packs several answer positions after them, and an
attention that exploits that mask's shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from transformers import DynamicCache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from qrcore.model.ffn import FFNSite, decoder_layers
from qrcore.model.interventions import forward_hooks, patch_ffn


def clean_pass(model: PreTrainedModel, sites: list[FFNSite], ids: torch.Tensor, cache: DynamicCache | None = None):
    """Unedited forward of `ids` (after `cache`, if given).

    Returns the output, f at the last position (layers, neurons) and each decoder layer's input there (layers, hidden).
    """
    f_rec: dict[int, torch.Tensor] = {}
    h_rec: list[torch.Tensor] = []

    def record(layer: int, f: torch.Tensor) -> torch.Tensor:
        f_rec[layer] = f[0, -1].detach()  # (neurons,)
        return f

    def record_input(_module, args, kwargs):
        h_rec.append((args[0] if args else kwargs["hidden_states"])[0, -1].detach())  # (hidden,)

    kwargs = {} if cache is None else {"past_key_values": cache, "use_cache": True}
    layer_inputs = forward_hooks(((b, record_input) for b in decoder_layers(model)), pre=True)
    with torch.no_grad(), layer_inputs, patch_ffn(model, record, sites=sites):
        out = model(ids, **kwargs)
    return out, torch.stack([f_rec[s.layer] for s in sites]), torch.stack(h_rec)


def prefix_kv(
    model: PreTrainedModel,
    prefix_ids: torch.Tensor,
    past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    **inputs: torch.Tensor | dict[str, torch.Tensor],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every layer for the positions before the answer position, computed once.

    With `past` (an earlier result for the first positions) only `prefix_ids`, the positions after those, run; the
    result covers both. A config-less DynamicCache keeps every position in every layer; sliding windows are applied
    by the mask. `inputs` go to the forward as they are (attention_mask and position_ids of a left-padded batch).
    """
    cache = DynamicCache(past) if past else DynamicCache()
    with torch.no_grad():  # logits of the prefix are unused
        model(prefix_ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **inputs)
    return [_keys_values(layer) for layer in cache.layers]


def _keys_values(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of one filled attention layer of a DynamicCache."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError(f"cache layer {type(layer).__name__} holds no keys and values after the forward")
    return keys, values


def packed_mask(config, lengths: list[int], rows: list[int], dtype: torch.dtype, device: torch.device):
    """Additive 4D mask (1, 1, n, P + n) for n packed answer positions after P cached prefix positions.

    The cache holds prefixes of `lengths` one after another; packed row i sees only its own prefix
    (number rows[i]) and itself, never another row. Models with sliding-window layers get a dict by layer
    type, the window applied within each prefix.
    """
    lo = torch.finfo(dtype).min
    length = torch.tensor(lengths, device=device)
    end = length.cumsum(0)[torch.tensor(rows, device=device)]  # (n,) end of each row's prefix
    start = end - length[torch.tensor(rows, device=device)]  # (n,)
    col = torch.arange(int(length.sum()), device=device)  # (P,)
    n = len(rows)

    def build(window: int | None) -> torch.Tensor:
        first = start if window is None else torch.maximum(start, end + 1 - window)  # (n,)
        seen = (col[None] >= first[:, None]) & (col[None] < end[:, None])  # (n, P)
        mask = torch.cat([seen, torch.eye(n, dtype=torch.bool, device=device)], dim=1)  # (n, P + n)
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, lo)[None, None]

    return by_layer_type(config, build)


def causal_mask(
    config,
    columns: Sequence[Sequence[int]],
    key_pos: Sequence[int],
    query_pos: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive 4D mask (1, 1, n, K) for n query positions of several sequences packed into one forward.

    columns[i] lists the key columns of query i's sequence (its own earlier tokens, a shared start); of those it sees
    the ones at its position or before (key_pos (K,), query_pos (n,): positions within the sequence), and on
    sliding-window layers only the last `sliding_window` of them.
    """
    lo = torch.finfo(dtype).min
    visible = torch.zeros(len(query_pos), len(key_pos), dtype=torch.bool)  # (n, K)
    for row, cols in enumerate(columns):
        visible[row, list(cols)] = True
    visible = visible.to(device)
    back = torch.tensor(query_pos, device=device)[:, None] - torch.tensor(key_pos, device=device)[None]  # (n, K)

    def build(window: int | None) -> torch.Tensor:
        seen = visible & (back >= 0) & (back < window if window else True)  # (n, K)
        return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill_(~seen, lo)[None, None]

    return by_layer_type(config, build)


def by_layer_type(config, build):
    """build(None), or for models with sliding-window layers a dict by layer type of build(window or None)."""
    types = getattr(config, "layer_types", None)
    if not types:
        return build(None)
    window = getattr(config, "sliding_window", None)
    return {t: build(window if "sliding" in t else None) for t in set(types)}
