"""Prompt prefixes packed into one forward, and prompt stems: one template's prompts share their start, whose keys
and values are computed once. Prefixes computed so equal those of each whole prompt alone."""

from __future__ import annotations

import pytest
import torch

from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.oracle import prefix_cache_oracle
from qrcore.attribution.prefixes import prefix_cache, prompt_stem, stem_kv
from qrcore.data.prompts import ChoicePrompt
from qrcore.data.queries import make_query
from qrcore.model.forward import prefix_kv

QUERIES = [
    make_query("Which gas do plants take in?", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "Carbon dioxide"),
    make_query("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Mercury"], "Jupiter"),
    make_query("What is 7 times 8?", ["54", "56", "64", "48"], "56"),
]


def close(a: list, b: list) -> bool:
    """Two layers' lists of (keys, values) agree within 1e-5 of their largest magnitude."""
    pairs = [(x, y) for la, lb in zip(a, b, strict=True) for x, y in zip(la, lb, strict=True)]
    return all(x.shape == y.shape and (x - y).abs().max() <= 1e-5 * y.abs().max() for x, y in pairs)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_prefixes_packed_and_from_a_stem_match_each_whole_prompt(tiny, arch):
    lm = tiny(arch)
    attr = NeuronAttribution(lm)
    first = [attr.prompts(q)[0] for q in QUERIES]  # one template's prompts of three queries
    stem = prompt_stem(lm, first)
    assert stem is not None and len(stem.ids) > 20  # the chat header and the template's instruction
    assert all(p.input_ids[: len(stem.ids)] == stem.ids for p in first)
    assert len({p.input_ids[len(stem.ids)] for p in first}) > 1  # the longest shared start
    mixed = [*first, attr.prompts(QUERIES[0])[1]]  # three prompts sharing the stem, one of another template
    oracle = prefix_cache_oracle(lm, mixed).kv
    for cache in (prefix_cache(lm, mixed, [stem]), prefix_cache(lm, mixed)):  # one packed forward either way
        assert cache.lengths == [len(p.input_ids) - 1 for p in mixed] and close(cache.kv, oracle)


def test_a_stem_is_used_only_by_prompts_that_start_with_it(tiny):
    lm = tiny("llama")
    attr = NeuronAttribution(lm)
    stem = prompt_stem(lm, [attr.prompts(q)[0] for q in QUERIES])
    other = attr.prompts(QUERIES[0])[1].input_ids[:-1]  # another template: it leaves the stem early
    assert other[: len(stem.ids)] != stem.ids
    assert close(stem_kv(lm, other, [stem]), prefix_kv(lm.model, torch.tensor([other])))


def prompt(*ids: int) -> ChoicePrompt:
    """A prompt of these token ids (the last one its answer position)."""
    return ChoicePrompt("", ids, ("A", "B"), (1, 2), 0)


def test_stem_of_prompts_that_share_nothing_or_are_alone(tiny):
    lm = tiny("llama")
    assert prompt_stem(lm, [prompt(5, 6, 7, 8), prompt(9, 6, 7, 8)]) is None
    assert prompt_stem(lm, [prompt(5, 6, 7, 8), prompt(5, 6, 9, 8)]).ids == (5, 6)
    assert prompt_stem(lm, [prompt(5, 6, 7, 8)]).ids == (5, 6)  # the prefix less its last token, kept by the prompt
    assert prompt_stem(lm, [prompt(5, 6), prompt(5, 6)]) is None  # a one-token prefix is all the prompt's own
