"""Neuron editing (paper Sec. 5): scale chosen FFN neurons' activation f at the answer position and read
the option probabilities or the free-form answer that follow. 0 suppresses, 1 leaves, 2 boosts.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch

from qrcore.errors import QRNError
from qrcore.ffn import ffn_sites, patch_ffn
from qrcore.models import LoadedModel
from qrcore.prompts import ChoicePrompt

BOOST, SUPPRESS = 2.0, 0.0
"""The paper's edits: f doubled, f set to zero."""

Edit = dict[tuple[int, int], float]
"""(layer, neuron) -> multiplier of f."""


def check_neurons(lm: LoadedModel, neurons: Iterable[tuple[int, int]]) -> None:
    """Raise a one-line QRNError for a layer or neuron index outside the model."""
    sites = ffn_sites(lm.model)
    for layer, neuron in neurons:
        if not 0 <= layer < len(sites):
            raise QRNError(f"layer {layer} is out of range; this model has layers 0-{len(sites) - 1}.")
        if not 0 <= neuron < sites[layer].n_neurons:
            raise QRNError(f"neuron {neuron} is out of range; layer {layer} has neurons 0-{sites[layer].n_neurons - 1}.")


@contextmanager
def edited(lm: LoadedModel, edit: Edit) -> Iterator[None]:
    """Within the block, f of each edited neuron is multiplied at the last position of every forward.

    During generation with a cache each step's input is the last position, so generated tokens are edited too.
    """
    check_neurons(lm, edit)
    by_layer: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for (layer, neuron), mult in edit.items():
        by_layer[layer][0].append(neuron)
        by_layer[layer][1].append(mult)
    device = lm.device
    index = {l: torch.tensor(n, device=device) for l, (n, _) in by_layer.items()}
    scale = {l: torch.tensor(m, device=device) for l, (_, m) in by_layer.items()}

    def apply(layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (batch, seq, neurons)
        last = f[:, -1].clone()  # (batch, neurons)
        last[:, index[layer]] = last[:, index[layer]] * scale[layer].to(f.dtype)
        return torch.cat([f[:, :-1], last[:, None]], dim=1)

    with patch_ffn(lm.model, apply, layers=sorted(by_layer)):
        yield


PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values of every layer for a prompt's positions before the answer position."""


def prefix_cache(lm: LoadedModel, prompts: list[ChoicePrompt]) -> list[PrefixKV]:
    """Each prompt's prefix keys/values, computed once: edits act at the answer position only, so every later
    `letter_probs` with this cache costs a one-token forward per prompt."""
    from qrcore.attribution import prefix_kv

    return [prefix_kv(lm.model, torch.tensor([p.input_ids[:-1]], device=lm.device)) for p in prompts]


def letter_probs(lm: LoadedModel, prompts: list[ChoicePrompt], edit: Edit | None = None,
                 cache: list[PrefixKV] | None = None) -> np.ndarray:
    """(prompts, options) probability of each option letter token after each prompt, under `edit`.

    With `cache` (from `prefix_cache`) only the answer position is run; without it, the whole prompt.
    """
    from transformers import DynamicCache

    out = []
    with torch.no_grad(), edited(lm, edit or {}):
        for i, p in enumerate(prompts):
            ids = torch.tensor([p.input_ids], device=lm.device)  # (1, T)
            if cache is None:
                logits = lm.model(ids, logits_to_keep=1).logits
            else:
                logits = lm.model(ids[:, -1:], past_key_values=DynamicCache(cache[i]), use_cache=True).logits
            probs = logits[0, -1].float().softmax(-1)  # (vocab,)
            out.append(probs[list(p.letter_ids)].cpu().numpy())
    return np.stack(out)


def generate(lm: LoadedModel, question: str, edit: Edit | None = None, max_new_tokens: int = 48) -> str:
    """The model's free-form greedy answer to a plain question, under `edit`."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tok(question, return_tensors="pt")["input_ids"]
    ids = ids.to(lm.device)
    with torch.no_grad(), edited(lm, edit or {}):
        out = lm.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
