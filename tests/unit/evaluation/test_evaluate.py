"""The held-out queries' activations (group prediction, Table 7): a query's prompts and letters packed into one forward
after their cached prefixes equal the plain forwards."""

from __future__ import annotations

import numpy as np
import pytest

from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.oracle import held_out_oracle
from qrcore.attribution.prefixes import prefix_cache
from qrcore.data.queries import make_query
from qrcore.evaluation.evaluate import held_out_activations

pytestmark = (
    pytest.mark.integration
)  # packed and plain forwards on three architectures, the evaluation benchmark: seconds each

QUERY = make_query("Which gas do plants take in?", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "Carbon dioxide")
OTHER = make_query("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Mercury"], "Jupiter")


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("stemmed", [False, True])
def test_held_out_activations_match_the_whole_prompt_and_one_full_forward_per_letter(tiny, arch, stemmed):
    lm = tiny(arch)
    attr = NeuronAttribution(lm)
    prompts = attr.prompts(QUERY)  # the query's three templates, through one forward
    stems = attr.template_stems([QUERY, OTHER]) if stemmed else []
    assert not stemmed or all(s is not None and len(s.ids) > 20 for s in stems)  # the chat header and instruction
    held = held_out_activations(lm, attr.sites, prompts, prefix_cache(lm, prompts, stems))
    assert len(held) == len(prompts) == 3
    for prompt, (answer, options) in zip(prompts, held):  # (layers, neurons), (options, layers, neurons)
        plain, ref = held_out_oracle(lm, prompt)
        assert options.shape == (4, len(attr.sites), attr.sites[0].n_neurons)
        assert np.abs(options - ref).max() <= 1e-5 * np.abs(ref).max()
        assert np.abs(options[0] - options[1]).max() > 1e-3 * np.abs(ref).max()  # each letter gives its own
        assert answer.shape == plain.shape
        assert np.abs(answer - plain).max() <= 1e-5 * np.abs(plain).max()
        assert np.abs(answer - options[0]).max() > 1e-3 * np.abs(plain).max()  # the answer position, not a letter's
    assert np.abs(held[0][0] - held[1][0]).max() > 1e-3 * np.abs(held[0][0]).max()  # each prompt its own prefix


def test_bench_evaluation_times_both_ways_on_the_same_edits_and_they_agree(tiny, capsys):
    from qrbench.evaluation import bench_evaluation

    row = bench_evaluation(tiny("llama"), n_queries=2)
    out = capsys.readouterr().out
    assert "ratio one-by-one/packed:" in out and "1 forward of 78 positions" in out
    assert "all edits packed, 1 thread" in out and "continued from template stems" in out
    assert row["prefix_oracle_s"] > 0 and row["stemmed_prefix_s"] > 0 and row["prefix_diff"] < 1e-4
    assert row["one_by_one_s"] > 0 and row["packed_s"] > 0 and row["packed_one_thread_s"] > 0
    assert row["max_diff"] < 1e-5
    assert "held-out activations, whole-prompt forwards" in out and "1 forward of 15 positions" in out
    assert row["held_oracle_s"] > 0 and row["held_s"] > 0 and row["held_diff"] < 1e-5
