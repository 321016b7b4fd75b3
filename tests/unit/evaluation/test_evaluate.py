"""The held-out queries' activations (group prediction, Table 7): the packed path equals the plain forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qrcore.attribution.ig import NeuronAttribution
from qrcore.attribution.oracle import option_activations_oracle
from qrcore.data.queries import make_query
from qrcore.evaluation.evaluate import held_out_activations
from qrcore.model.forward import clean_pass

QUERY = make_query("Which gas do plants take in?", ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"], "Carbon dioxide")


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_held_out_activations_match_the_whole_prompt_and_one_full_forward_per_letter(tiny, arch):
    lm = tiny(arch)
    attr = NeuronAttribution(lm)
    prompt = attr.prompts(QUERY)[0]
    answer, options = held_out_activations(lm, attr.sites, prompt)  # (layers, neurons), (options, layers, neurons)
    ref = option_activations_oracle(lm, prompt)
    assert options.shape == (4, len(attr.sites), attr.sites[0].n_neurons)
    assert np.abs(options - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(options[0] - options[1]).max() > 1e-3 * np.abs(ref).max()  # each letter gives its own activations
    plain = clean_pass(lm.model, attr.sites, torch.tensor([prompt.input_ids]))[1].float().numpy()  # (layers, neurons)
    assert answer.shape == plain.shape
    assert np.abs(answer - plain).max() <= 1e-5 * np.abs(plain).max()
    assert np.abs(answer - options[0]).max() > 1e-3 * np.abs(plain).max()  # the answer position, not a letter's


def test_bench_evaluation_times_both_ways_on_the_same_edits_and_they_agree(tiny, capsys):
    from qrbench.evaluation import bench_evaluation

    row = bench_evaluation(tiny("llama"), n_queries=2)
    out = capsys.readouterr().out
    assert "ratio one-by-one/packed:" in out and "1 forward of 78 positions" in out
    assert "all edits packed, 1 thread" in out and "continued from template stems" in out
    assert row["prefix_oracle_s"] > 0 and row["stemmed_prefix_s"] > 0 and row["prefix_diff"] < 1e-4
    assert row["one_by_one_s"] > 0 and row["packed_s"] > 0 and row["packed_one_thread_s"] > 0
    assert row["max_diff"] < 1e-5
