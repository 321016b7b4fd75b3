"""Neuron editing (paper Sec. 5): scale chosen FFN neurons' activation f at the answer position and read
the option probabilities or the free-form answer that follow. 0 suppresses, 1 leaves, 2 boosts.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from qrcore.data.prompts import ChoicePrompt
from qrcore.editing.edits import check_model
from qrcore.errors import QRNError
from qrcore.model.ffn import ffn_sites, patch_ffn
from qrcore.model.forward import packed_mask, prefix_kv
from qrcore.model.spec import LoadedModel

BOOST, SUPPRESS = 2.0, 0.0
"""The paper's edits: f doubled, f set to zero."""

Edit = Mapping[tuple[int, int], float]
"""(layer, neuron) -> multiplier of f."""


def check_neurons(lm: LoadedModel, neurons: Iterable[tuple[int, int]]) -> None:
    """Raise a one-line QRNError for a layer or neuron index outside the model."""
    sites = ffn_sites(lm.model)
    for layer, neuron in neurons:
        if not 0 <= layer < len(sites):
            raise QRNError(f"layer {layer} is out of range; this model has layers 0-{len(sites) - 1}.")
        if not 0 <= neuron < sites[layer].n_neurons:
            raise QRNError(
                f"neuron {neuron} is out of range; layer {layer} has neurons 0-{sites[layer].n_neurons - 1}."
            )


@contextmanager
def edited(lm: LoadedModel, edit: Edit, every_position: bool = False) -> Iterator[None]:
    """Within the block, f of each edited neuron is multiplied at the last position of every forward
    (or at every position, for packed answer positions).

    During generation with a cache each step's input is the last position, so generated tokens are edited too.
    An edit loaded from a file (`qrcore.editing.edits.load_edit`) must have been made for this model.
    """
    check_model(edit, lm.fingerprint, lm.spec.name)
    check_neurons(lm, edit)
    by_layer: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for (layer, neuron), mult in edit.items():
        by_layer[layer][0].append(neuron)
        by_layer[layer][1].append(mult)
    device = lm.device
    index = {l: torch.tensor(n, device=device) for l, (n, _) in by_layer.items()}
    scale = {l: torch.tensor(m, device=device) for l, (_, m) in by_layer.items()}

    def apply(layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (batch, seq, neurons)
        part = f if every_position else f[:, -1:]
        part = part.clone()
        part[..., index[layer]] = part[..., index[layer]] * scale[layer].to(f.dtype)
        return part if every_position else torch.cat([f[:, :-1], part], dim=1)

    with patch_ffn(lm.model, apply, layers=sorted(by_layer)):
        yield


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run torch on one CPU thread inside the block.

    A forward of a few positions is memory-bound; on a busy 2-core machine OpenMP's second thread made it take
    2.6 s instead of 0.12 s (measured on SmolLM2, three packed answer positions).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class PackedPrefix:
    """Several prompts' prefix keys/values laid one after another, for one packed forward of their answer positions."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per layer (keys, values) of shape (1, kv heads, sum of lengths, head dim)."""
    lengths: list[int]
    """Prefix length of each prompt (its answer token's position id)."""


def prefix_cache(lm: LoadedModel, prompts: list[ChoicePrompt]) -> PackedPrefix:
    """Each prompt's prefix keys/values, computed once: edits act at the answer position only, so every later
    `letter_probs` with this cache costs one forward of len(prompts) packed positions."""

    per = [prefix_kv(lm.model, torch.tensor([p.input_ids[:-1]], device=lm.device)) for p in prompts]
    kv = [tuple(torch.cat([c[layer][i] for c in per], dim=2) for i in (0, 1)) for layer in range(len(per[0]))]
    return PackedPrefix(kv, [len(p.input_ids) - 1 for p in prompts])


def letter_probs(
    lm: LoadedModel, prompts: list[ChoicePrompt], edit: Edit | None = None, cache: PackedPrefix | None = None
) -> np.ndarray:
    """(prompts, options) probability of each option letter token after each prompt, under `edit`; NaN past a
    prompt's own letters when the prompts have different numbers of options (imported ready-made prompts).

    With `cache` (from `prefix_cache`) only the answer positions run, packed into one forward (the same
    4D-mask packing as the attribution's fast path); without it, each whole prompt runs on its own.
    """
    if cache is None:
        with torch.no_grad(), edited(lm, edit or {}):
            rows = [
                lm.model(torch.tensor([p.input_ids], device=lm.device), logits_to_keep=1).logits[0, -1] for p in prompts
            ]  # each (vocab,)
    else:
        from transformers import DynamicCache

        n = len(prompts)
        ids = torch.tensor([[p.input_ids[-1] for p in prompts]], device=lm.device)  # (1, n)
        dtype = cache.kv[0][0].dtype
        with torch.no_grad(), one_thread(lm.device), edited(lm, edit or {}, every_position=True):
            rows = lm.model(
                ids,
                position_ids=torch.tensor([cache.lengths], device=lm.device),
                attention_mask=packed_mask(lm.model.config, cache.lengths, list(range(n)), dtype, lm.device),
                past_key_values=DynamicCache(cache.kv),
                use_cache=True,
            ).logits[0]  # (n, vocab)
    return pad_rows([row.float().softmax(-1)[list(p.letter_ids)].cpu().numpy() for row, p in zip(rows, prompts)])


def pad_rows(rows: Iterable[np.ndarray]) -> np.ndarray:
    """(rows, widest) float array of 1-D rows of any lengths, NaN past each row's end (take argmax with nanargmax)."""
    rows = list(rows)
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def correct_probs(probs: np.ndarray, prompts: list[ChoicePrompt]) -> np.ndarray:
    """(prompts,) probability of each prompt's correct letter, from `letter_probs` output (prompts, options)."""
    return np.array([p[c.correct] for p, c in zip(probs, prompts)])


def generate(lm: LoadedModel, question: str, edit: Edit | None = None, max_new_tokens: int = 48) -> str:
    """The model's free-form greedy answer to a plain question, under `edit`."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tok(question, return_tensors="pt")["input_ids"]
    ids = ids.to(lm.device)
    with torch.no_grad(), edited(lm, edit or {}):
        out = lm.model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
