"""Prompt prefixes computed once: the keys and values of every position before the answer position, for the
forwards that then run only the answer position (the attribution's scaled copies, the edits, the letter reads).

Several prompts go through one forward, packed one after another (a forward takes a fixed time to read the
weights, however few its positions), and the prompts of one template continue from their shared stem, computed
once for a dataset. `qrcore.attribution.oracle.prefix_cache_oracle` is the plain version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from qrcore.data.prompts import ChoicePrompt
from qrcore.model.forward import causal_mask, prefix_kv
from qrcore.model.spec import LoadedModel


@dataclass(frozen=True)
class PackedPrefix:
    """Several prompts' prefix keys/values laid one after another, for one packed forward of their answer positions."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per layer (keys, values) of shape (1, kv heads, sum of lengths, head dim)."""
    lengths: list[int]
    """Prefix length of each prompt (its answer token's position id)."""

    def __add__(self, other: PackedPrefix) -> PackedPrefix:
        """Both prefixes' prompts, this one's first (one packed forward can then run them all)."""
        kv = [(torch.cat([a[0], b[0]], dim=2), torch.cat([a[1], b[1]], dim=2)) for a, b in zip(self.kv, other.kv)]
        return PackedPrefix(kv, self.lengths + other.lengths)

    def prompt(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Prompt i's own keys/values, per layer (1, kv heads, its length, head dim): as `prefix_kv` of it alone."""
        start = sum(self.lengths[:i])
        return [
            (k[:, :, start : start + self.lengths[i]], v[:, :, start : start + self.lengths[i]]) for k, v in self.kv
        ]


@dataclass(frozen=True)
class PromptStem:
    """The first tokens that many prompts share (one template's prompts of a dataset: the chat header and the
    instruction) with their keys and values, computed once for all of them."""

    ids: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per layer (keys, values) of shape (1, kv heads, len(ids), head dim)."""


def prompt_stem(lm: LoadedModel, prompts: Sequence[ChoicePrompt]) -> PromptStem | None:
    """The longest start that every prompt's prefix (all but the answer position) shares, less the last token of the
    shortest, so that each prompt keeps a token of its own; None when they share nothing."""
    prefixes = [p.input_ids[:-1] for p in prompts]
    shortest = min(len(x) for x in prefixes) - 1
    n = next((i for i in range(shortest) if len({x[i] for x in prefixes}) > 1), max(shortest, 0))
    if not n:
        return None
    ids = prefixes[0][:n]
    return PromptStem(ids, prefix_kv(lm.model, torch.tensor([ids], device=lm.device)))


def longest_stem(ids: Sequence[int], stems: Sequence[PromptStem | None]) -> PromptStem | None:
    """The longest of `stems` that `ids` start with and go beyond, if any."""
    fits = [s for s in stems if s and len(s.ids) < len(ids) and tuple(ids[: len(s.ids)]) == s.ids]
    return max(fits, key=lambda s: len(s.ids), default=None)


def stem_kv(
    lm: LoadedModel, ids: Sequence[int], stems: Sequence[PromptStem | None] = ()
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`prefix_kv` of `ids`, continued from the longest of `stems` that they start with (the same numbers up to float
    rounding; the oracle is `prefix_kv` of all of `ids`)."""
    stem = longest_stem(ids, stems)
    start = len(stem.ids) if stem else 0
    return prefix_kv(lm.model, torch.tensor([ids[start:]], device=lm.device), stem.kv if stem else None)


def prefix_cache(lm: LoadedModel, prompts: list[ChoicePrompt], stems: Sequence[PromptStem | None] = ()) -> PackedPrefix:
    """Each prompt's prefix keys/values, computed once: edits act at the answer position only, so every later
    `letter_probs` with this cache costs one forward of len(prompts) packed positions.

    The prompts go through one forward together (a forward takes a fixed time to read the weights, however few its
    positions), each continuing from the longest of `stems` it starts with; `causal_mask` keeps each prompt to its own
    tokens and stem. The oracle is `prefix_kv` of each whole prompt on its own.
    """
    prefixes = [p.input_ids[:-1] for p in prompts]
    mine = [longest_stem(ids, stems) for ids in prefixes]
    used = list({id(s): s for s in mine if s}.values())  # the stems these prompts continue, once each
    key_pos: list[int] = []  # the forward's keys: the used stems' positions, then each prompt's own ones
    stem_columns = {}
    for stem in used:
        stem_columns[id(stem)] = range(len(key_pos), len(key_pos) + len(stem.ids))
        key_pos += range(len(stem.ids))
    first_own = len(key_pos)
    ids: list[int] = []  # every prompt's own tokens, one after another: the forward's input
    query_pos: list[int] = []
    columns = []  # per prompt, its key columns in order: its stem's, then its own
    seen = []  # per own position, its prompt's columns (causal_mask adds order and windows)
    for prefix, stem in zip(prefixes, mine):
        start = len(stem.ids) if stem else 0
        own = range(first_own + len(ids), first_own + len(ids) + len(prefix) - start)
        columns.append([*(stem_columns[id(stem)] if stem else ()), *own])
        seen += [columns[-1]] * len(own)
        ids += prefix[start:]
        query_pos += range(start, len(prefix))
    key_pos += query_pos
    past = (
        [
            (torch.cat([s.kv[i][0] for s in used], dim=2), torch.cat([s.kv[i][1] for s in used], dim=2))
            for i in range(len(used[0].kv))
        ]
        if used
        else None
    )
    device = lm.device
    mask = causal_mask(lm.model.config, seen, key_pos, query_pos, lm.model.dtype, device)
    position_ids = torch.tensor([query_pos], device=device)  # (1, own positions)
    kv = prefix_kv(lm.model, torch.tensor([ids], device=device), past, attention_mask=mask, position_ids=position_ids)
    # kv: per layer (1, kv heads, stems' and own positions, head dim)
    index = torch.tensor([c for cols in columns for c in cols], device=device)  # each prompt's stem and own keys
    return PackedPrefix([(k[:, :, index], v[:, :, index]) for k, v in kv], [len(p) for p in prefixes])
