"""The live computation's choices (issue 26): the model's live rule and bfloat16 agreement read from the live-rules
file, bfloat16 products only where the measured peaks and agreement allow, and `qrn run --live-rule`."""

from __future__ import annotations

import numpy as np
import pytest

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution, live_block
from qrcore.attribution.live_rule import (
    AUTHORS,
    LIVE_RULES,
    Bf16Agreement,
    LiveRule,
    bf16_agreement,
    live_rule,
    save_bf16_agreement,
    save_live_rule,
)
from qrcore.attribution.precision import choose_bf16, chosen_precision
from qrcore.cli import main
from qrcore.data.queries import make_query
from qrcore.model.interventions import bfloat16_matmuls
from qrcore.settings import AttributionSettings

GL8 = AttributionSettings(8, "gauss_legendre")
AMX = (1.0e12, 5.0e12)
"""(float32, bfloat16) peaks in FLOP/s of a CPU with AMX: bfloat16 several times float32."""
AVX512_BF16 = (1.0e12, 1.6e12)
AVX2 = (1.0e12, 0.3e12)
"""No bfloat16 units: bfloat16 products are emulated, slower than float32."""
QUERY = make_query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris")


def agreed(qr: float) -> Bf16Agreement:
    """A measured agreement with QR-neuron Jaccard `qr`."""
    return Bf16Agreement(qr, 0.9, "qrn bench precision --per-group 1, 6 built-in queries")


@pytest.mark.parametrize(
    ("peaks", "qr", "use", "says"),
    [
        (
            AMX,
            0.964,
            True,
            "bfloat16 products: bfloat16 matmul peak 5,000 GFLOP/s = 5.0x float32's 1,000, and m's QR "
            "neurons under bfloat16 match float32's with a mean Jaccard of 0.964 >= 0.95",
        ),
        (AVX512_BF16, 0.95, True, "= 1.6x float32's 1,000, and m's QR neurons"),
        (
            AMX,
            0.747,
            False,
            "float32 products: bfloat16 matmul peak 5,000 GFLOP/s = 5.0x float32's 1,000, but m's QR "
            "neurons under bfloat16 match float32's with a mean Jaccard of 0.747 < 0.95",
        ),
        (AMX, None, False, "but bfloat16's agreement was never measured for m"),
        (
            AVX2,
            0.99,
            False,
            "float32 products: bfloat16 matmul peak 300 GFLOP/s = 0.3x float32's 1,000 here, under the "
            "1.5x that would pay",
        ),
        ((1.0e12, 1.4e12), 0.99, False, "= 1.4x float32's 1,000 here, under the 1.5x"),
    ],
)
def test_bf16_is_chosen_only_where_its_peak_is_well_above_float32_and_the_model_agrees(peaks, qr, use, says):
    choice = choose_bf16(*peaks, None if qr is None else agreed(qr), "m")
    assert choice.use is use and says in choice.why


def test_the_shipped_measurements_give_bf16_to_qwen_and_not_to_smollm2_on_an_amx_cpu():
    qwen, smollm2 = bf16_agreement("qwen2.5-coder-1.5b"), bf16_agreement("smollm2")
    assert (qwen.qr_jaccard, smollm2.qr_jaccard) == (0.964, 0.747)
    assert choose_bf16(*AMX, qwen, "qwen2.5-coder-1.5b").use
    assert not choose_bf16(*AMX, smollm2, "smollm2").use
    assert not choose_bf16(*AVX2, qwen, "qwen2.5-coder-1.5b").use
    assert live_rule("smollm2").is_authors and "no cheaper rule" in live_rule("smollm2").why
    assert live_rule("tiny-llama") == LiveRule(
        AUTHORS, "the authors' rule (linspace 16): no live rule was measured for tiny-llama"
    )
    assert bf16_agreement("tiny-llama") is None and LIVE_RULES.is_file()


def test_a_models_rule_and_bf16_agreement_are_saved_side_by_side(tmp_path):
    path = tmp_path / "live_rules.json"
    save_live_rule("m", LiveRule(GL8, "measured"), path)
    save_bf16_agreement("m", agreed(0.97), path)
    save_bf16_agreement("other", agreed(0.5), path)
    assert live_rule("m", path) == LiveRule(GL8, "measured") and bf16_agreement("m", path) == agreed(0.97)
    save_live_rule("m", LiveRule(AUTHORS, "again"), path)  # a new rule keeps the agreement, and the other way
    assert bf16_agreement("m", path) == agreed(0.97) and live_rule("m", path).why == "again"
    assert live_rule("other", path).is_authors and bf16_agreement("other", path) == agreed(0.5)
    with pytest.raises(ValueError, match="Jaccard values lie in"):
        Bf16Agreement(1.2, 0.9, "x")


@pytest.mark.integration  # attributions in both precisions: seconds
def test_chosen_precision_is_bf16_products_where_chosen_and_exact_elsewhere(tiny):
    lm = tiny("gemma3")
    attr = NeuronAttribution(lm)
    exact = attr.attribute(QUERY).ig
    with bfloat16_matmuls(lm.model):
        mixed = attr.attribute(QUERY).ig
    with chosen_precision(lm.model, False):
        np.testing.assert_array_equal(attr.attribute(QUERY).ig, exact)
    with chosen_precision(lm.model, True):
        np.testing.assert_array_equal(attr.attribute(QUERY).ig, mixed)
    assert 0 < np.abs(mixed - exact).max() < 0.05 * np.abs(exact).max()  # within tolerance of float32


def test_the_labs_blocks_are_sevenths_of_the_layers():
    assert [live_block(n) for n in (1, 4, 7, 8, 28, 30)] == [1, 1, 1, 2, 4, 5]


@pytest.mark.integration  # a whole `qrn run`
def test_qrn_run_with_the_live_rule_records_it_in_the_runs_settings(tmp_path, monkeypatch, capsys):
    rules = tmp_path / "live_rules.json"
    save_live_rule("tiny-llama", LiveRule(GL8, "gauss_legendre 8: measured"), rules)
    monkeypatch.setattr("qrcore.attribution.live_rule.LIVE_RULES", rules)
    db = str(tmp_path / "qrn.duckdb")
    base = ["run", "--dataset", "domain", "--groups", "biology", "--per-group", "1", "--model", "tiny-llama"]
    assert main([*base, "--db", db, "--name", "live", "--live-rule"]) == 0
    assert "live rule of tiny-llama: gauss_legendre 8: measured" in capsys.readouterr().out
    assert main([*base, "--db", db, "--name", "authors"]) == 0
    with store.connect(db, read_only=True) as con:
        runs = store.list_runs(con).set_index("name")["run_id"]
        live, authors = (store.run_info(con, runs[n]) for n in ("live", "authors"))
    assert live.settings.attribution == GL8 and authors.settings.attribution == AUTHORS
    assert runs["live"] != runs["authors"]  # the rule is part of the run's key
    capsys.readouterr()
    assert main([*base, "--db", db, "--live-rule", "--steps", "8"]) == 2
    assert capsys.readouterr().err == (
        "qrn: error: --live-rule sets the rule and its points from the model's measurement; leave out --riemann and "
        "--steps.\n"
    )
