"""Many edits of many prompts in as few forwards as memory allows: each query's prefixes are cached once, queries are
joined into blocks of cached keys, and each block's rows (edits x prompts) go through `letter_probs_under` in chunks
whose (rows, vocabulary) logits and (heads, rows, keys) attention scores stay within a bound (Qwen's vocabulary is
151k tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
import operator

import numpy as np

from qrcore.attribution.prefixes import PackedPrefix, PromptStem, prefix_cache
from qrcore.data.prompts import ChoicePrompt
from qrcore.editing.scaling import Edit, letter_probs_under
from qrcore.model.spec import LoadedModel, unembedding
from qrcore.progress import Progress

MAX_ELEMENTS = 2**26
"""Most float entries of one forward's logits, or of one layer's attention scores: 256 MiB in float32."""


def sizes(lm: LoadedModel) -> tuple[int, int]:
    """(vocabulary, attention heads) of the model: what one packed row costs per logit and per cached key."""
    config = lm.model.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return unembedding(lm.model).shape[0], heads


def blocks(lengths: Sequence[int], limit: int) -> list[range]:
    """Consecutive queries joined while their cached keys (`lengths`, one total per query) stay within `limit`; a query
    longer than `limit` is a block of its own."""
    out: list[range] = []
    start, total = 0, 0
    for i, length in enumerate(lengths):
        if i > start and total + length > limit:
            out.append(range(start, i))
            start, total = i, 0
        total += length
    return out + ([range(start, len(lengths))] if len(lengths) else [])


def probs_under_edits(
    lm: LoadedModel,
    queries: Sequence[Sequence[ChoicePrompt]],
    edits: Sequence[Edit],
    stems: Sequence[PromptStem | None] = (),
    max_elements: int = MAX_ELEMENTS,
    progress: Progress | None = None,
) -> np.ndarray:
    """(edits, prompts, options) raw letter probabilities of every query's prompts (one after another) under every
    edit, NaN past a prompt's own options; the same numbers as `letter_probs` per edit, in few packed forwards."""
    prompts = [p for q in queries for p in q]
    width = max((len(p.letter_ids) for p in prompts), default=0)
    out = np.full((len(edits), len(prompts), width), np.nan, np.float32)  # (edits, prompts, options)
    lengths = [sum(len(p.input_ids) - 1 for p in q) for q in queries]  # each query's cached keys
    vocab, heads = sizes(lm)
    parts = blocks(lengths, max(1, vocab // heads))  # a row's attention scores stay below its logits
    first = np.cumsum([0, *map(len, queries)])  # each query's first prompt
    done = 0
    for part in parts:
        block = [p for i in part for p in queries[i]]
        cache: PackedPrefix = reduce(operator.add, (prefix_cache(lm, list(queries[i]), stems) for i in part))
        per = max(1, max_elements // ((vocab + heads * sum(cache.lengths)) * len(block)))  # edits per forward
        for start in range(0, len(edits), per):
            chunk = edits[start : start + per]
            probs = letter_probs_under(lm, block, cache, chunk)  # (chunk, block prompts, options)
            out[start : start + len(chunk), first[part.start] : first[part.stop], : probs.shape[2]] = probs
            done += len(chunk) * len(block)
            if progress:
                progress(done, len(edits) * len(prompts), f"{done} of {len(edits) * len(prompts)} rows")
    return out
