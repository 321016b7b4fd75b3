"""The shape-based FLOP count of one prompt's attribution equals what torch counts on a real run."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.queries import make_query
from qrcore.model.flops import ModelShape, ig_prompt_flops, matmul_peak
from qrcore.settings import GRADIENT_X_ACTIVATION, AttributionSettings

QUERY = make_query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris")


@pytest.mark.parametrize("settings", [AttributionSettings(), GRADIENT_X_ACTIVATION], ids=["ig", "preview"])
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_counted_flops_match_torchs_flop_counter(tiny, arch, settings):
    lm = tiny(arch)
    attr = NeuronAttribution(lm, settings)
    prompt = attr.prompts(QUERY)[0]
    with FlopCounterMode(display=False) as counter:
        attr.ig_prompt(prompt)
    shape, prefix = ModelShape.of(lm.model), len(prompt.input_ids) - 1
    counted = ig_prompt_flops(shape, prefix + 1, settings.steps, attr.at_clean_point)
    # torch counts the prefix's whole causal score square; the count takes the keys each position sees
    square = 4 * len(shape.layer_weights) * prefix * (prefix - (prefix + 1) / 2) * shape.attention_width
    assert counted == pytest.approx(counter.get_total_flops() - square, rel=0.03)


def test_matmul_peak_is_a_positive_rate():
    assert matmul_peak(torch.float32, torch.device("cpu"), size=256, repeats=1) > 1e8


@pytest.mark.integration  # the attribution benchmark: timed attributions
def test_bench_attribution_prints_each_path_against_the_peak(tiny, capsys):
    from qrbench.attribution import bench_attribution

    row = bench_attribution(tiny("llama"), n_queries=1, oracle_prompts=0)
    out = capsys.readouterr().out
    assert "measured matmul peak" in out and "read before and after" in out
    assert "oracle" not in out.split("\n", 1)[1]  # no oracle asked for
    for path in ("fast", "preview"):
        assert f"{path}_peak_share" in row and 0 < row[f"{path}_peak_share"] < 1
    assert row["fast_gflop_per_query"] > 5 * row["preview_gflop_per_query"]  # m = 16 copies against one
    assert 0 <= row["preview_top20_overlap"] <= 1
    assert "in a run" in out and row["run_s_per_query"] > 0 and row["run_max_rel_diff"] < 1e-4
