"""Forward passes shared by the attribution, the editing and the evaluations: the clean pass that records f,
a prompt prefix's keys and values computed once, and the 4D mask that packs several answer positions after them."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from qrcore.model.ffn import FFNSite, decoder_layers, forward_hooks, patch_ffn


def clean_pass(model: torch.nn.Module, sites: list[FFNSite], ids: torch.Tensor, cache: DynamicCache | None = None):
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


def prefix_kv(model: torch.nn.Module, prefix_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every layer for the positions before the answer position, computed once.

    A config-less DynamicCache keeps every position in every layer; sliding windows are applied by the mask.
    """
    cache = DynamicCache()
    with torch.no_grad():
        model(prefix_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)  # logits of the prefix are unused
    return [(layer.keys, layer.values) for layer in cache.layers]


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

    types = getattr(config, "layer_types", None)
    if not types:
        return build(None)
    window = getattr(config, "sliding_window", None)
    return {t: build(window if "sliding" in t else None) for t in set(types)}
