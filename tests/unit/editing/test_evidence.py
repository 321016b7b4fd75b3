"""Evidence that an edit is real (issue 25): packed edits against one plain forward per edit, matched controls, the
permutation p-value and the flip multiplier by hand, renormalised probabilities, group edits and the `qrn lab` command."""

from __future__ import annotations

from collections import Counter
import math

import numpy as np
import pytest

from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.queries import make_query
from qrcore.editing import evidence, packing
from qrcore.editing.controls import control_test, matched_controls
from qrcore.editing.fluency import fluency, ngram_entropy
from qrcore.editing.readable import OptionProbs, answered_right, correct_share, margin, renormalise
from qrcore.editing.scaling import letter_probs
from qrcore.errors import QRNError

QUERY = make_query("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], "Paris")
OTHER = make_query("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Mercury"], "Jupiter")
NEURONS = [(0, 5), (1, 17), (1, 40), (3, 90)]


def slow_share(lm, prompts, edit) -> float:
    """The oracle: mean renormalised P(correct) from one whole-prompt forward per prompt under `edit`, no cache."""
    return float(correct_share(letter_probs(lm, prompts, edit), np.array([p.correct for p in prompts])).mean())


def test_renormalised_probabilities_sum_to_one_beside_the_raw_vocabulary_share(tiny):
    lm = tiny("llama")
    prompts = NeuronAttribution(lm).prompts(QUERY)
    raw = letter_probs(lm, prompts)  # (templates, options)
    for prompt, row in zip(prompts, raw):
        probs = OptionProbs.of(prompt, row)
        assert sum(probs.probability) == pytest.approx(1.0)
        assert probs.vocabulary_share == pytest.approx(tuple(row))  # the raw share is kept beside
        assert probs.options_share == pytest.approx(float(row.sum())) and probs.options_share < 0.99
        assert probs.table()["correct"].tolist() == [i == prompt.correct for i in range(4)]
    padded = np.array([[0.1, 0.3, np.nan], [0.2, 0.2, 0.4]])
    assert np.allclose(renormalise(padded), [[0.25, 0.75, np.nan], [0.25, 0.25, 0.5]], equal_nan=True)
    assert correct_share(padded, np.array([1, 2])) == pytest.approx([0.75, 0.5])
    assert answered_right(padded, np.array([1, 0])).tolist() == [True, False]
    assert margin(padded, np.array([1, 2])) == pytest.approx([0.5, 0.25])
    with pytest.raises(ValueError, match="sum to 1"):
        OptionProbs(("A", "B"), ("x", "y"), 0, (0.5, 0.6), (0.1, 0.1))


def test_blocks_join_queries_up_to_the_key_limit():
    assert packing.blocks([5, 5, 5, 20, 1], 10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert packing.blocks([3, 3], 100) == [range(0, 2)] and packing.blocks([], 10) == []


@pytest.mark.integration  # one plain forward per edit on three architectures: seconds
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_packed_edits_match_one_plain_forward_per_edit(tiny, arch, monkeypatch):
    """Every edit of every prompt, chunked two edits a forward, against `letter_probs` without a cache, edit by edit."""
    lm = tiny(arch)
    attr = NeuronAttribution(lm)
    queries = [attr.prompts(QUERY), attr.prompts(OTHER)]
    edits = [
        {},
        evidence.scaled(NEURONS, 0.0),
        evidence.scaled(NEURONS, 4.0),
        evidence.scaled(NEURONS[:2], -1.0),
        {(2, 3): 3.0},
    ]
    vocab, heads = packing.sizes(lm)
    keys = sum(len(p.input_ids) - 1 for q in queries for p in q)
    calls = []
    real = packing.letter_probs_under
    monkeypatch.setattr(packing, "letter_probs_under", lambda *a: calls.append(len(a[3])) or real(*a))
    packed = packing.probs_under_edits(lm, queries, edits, max_elements=2 * (vocab + heads * keys) * 6)
    assert calls == [2, 2, 1]  # 6 prompts, two edits a forward
    prompts = [p for q in queries for p in q]
    for e, edit in enumerate(edits):
        slow = letter_probs(lm, prompts, edit)  # (prompts, options)
        assert np.allclose(packed[e], slow, rtol=1e-4, atol=0)
    assert np.abs(renormalise(packed[1]) - renormalise(packed[0])).max() > 1e-2  # the edit moves the answer


def test_matched_controls_keep_each_layers_count_exclude_the_edit_and_repeat_with_the_seed():
    sizes = [96] * 4
    draws = matched_controls(NEURONS, sizes, 50, seed=3)
    assert len(draws) == 50
    for draw in draws:
        assert Counter(l for l, _ in draw) == Counter({0: 1, 1: 2, 3: 1})
        assert not set(draw) & set(NEURONS) and len(set(draw)) == len(draw)
        assert [l for l, _ in draw] == [0, 1, 1, 3]  # layer by layer, as sorted(NEURONS)
    assert draws == matched_controls(NEURONS, sizes, 50, seed=3)
    assert draws != matched_controls(NEURONS, sizes, 50, seed=4)
    assert len({tuple(d) for d in draws}) > 45  # the draws differ from each other
    assert set(matched_controls([(0, n) for n in range(4)], [8], 20)[0]) <= {(0, n) for n in range(4, 8)}
    with pytest.raises(QRNError, match="layer 0 has 8 neurons and the edit uses 5"):
        matched_controls([(0, n) for n in range(5)], [8], 1)


def test_control_test_p_value_and_interval_by_hand():
    controls = [0.0, -0.2, -0.1, 0.05]
    less = control_test(-0.1, controls, "less", level=0.5)
    assert less.p_value == pytest.approx((1 + 2) / (1 + 4))  # -0.2 and the tie -0.1 are at least as extreme
    assert (less.low, less.high) == (pytest.approx(-0.125), pytest.approx(0.0125))  # 25th and 75th percentiles
    assert control_test(0.05, controls, "greater").p_value == pytest.approx(2 / 5)
    assert control_test(1.0, controls, "greater").p_value == pytest.approx(1 / 5)  # the smallest p of 4 draws
    with pytest.raises(ValueError, match="alternative"):
        control_test(0.0, controls, "two-sided")


CORRECT_RAW = {"unedited": 0.3, "edit": 0.1}
CONTROL_RAW = [0.3, 0.05, 0.5, 0.1]
"""The fake model's raw probability of the correct letter under each edit; the three others get 0.08, 0.10, 0.12."""


def fake_probs(edits, queries, seen):
    """(edits, prompts, options) raw probabilities: the correct letter's from CORRECT_RAW/CONTROL_RAW by the edit's
    place (unedited, the edit, then the controls in order), the other letters fixed."""
    prompts = [p for q in queries for p in q]
    out = np.zeros((len(edits), len(prompts), 4))
    for e in range(len(edits)):
        x = CORRECT_RAW["unedited"] if e == 0 else CORRECT_RAW["edit"] if e == 1 else CONTROL_RAW[e - 2]
        for i, p in enumerate(prompts):
            out[e, i, [j for j in range(4) if j != p.correct]] = [0.08, 0.10, 0.12]
            out[e, i, p.correct] = x
    seen.append(list(edits))
    return out


def test_scorecard_control_and_p_value_against_a_hand_computed_case(tiny, monkeypatch):
    lm = tiny("llama")
    attr = NeuronAttribution(lm)
    seen = []
    monkeypatch.setattr(evidence, "probs_under_edits", lambda lm, queries, edits, *a: fake_probs(edits, queries, seen))
    card = evidence.scorecard(
        lm,
        {"reliability": [attr.prompts(QUERY)], "locality (other groups)": [attr.prompts(OTHER)] * 2},
        NEURONS,
        0.0,
        controls=4,
        seed=7,
    )
    edits = seen[0]
    assert edits[0] == {} and edits[1] == {n: 0.0 for n in NEURONS}
    assert [list(e) for e in edits[2:]] == matched_controls(NEURONS, [96] * 4, 4, seed=7)
    rel = card.measure("reliability")
    share = lambda x: x / (x + 0.3)  # noqa: E731 -- renormalised over the options
    assert (rel.p_before, rel.p_after) == (pytest.approx(0.5), pytest.approx(0.25))
    changes = [share(x) - 0.5 for x in CONTROL_RAW]  # 0, -0.357, +0.125, -0.25
    assert rel.test.controls == pytest.approx(changes)
    assert rel.test.effect == pytest.approx(-0.25)
    assert rel.test.p_value == pytest.approx((1 + 2) / (1 + 4))  # -0.357 and the tie -0.25
    assert rel.control_p == pytest.approx(np.mean([share(x) for x in CONTROL_RAW]))
    assert (rel.accuracy_before, rel.accuracy_after, rel.control_accuracy) == (1.0, 0.0, 0.5)
    assert (rel.queries, rel.prompts) == (1, 3)
    other = card.measure("locality (other groups)")
    assert (other.queries, other.prompts) == (2, 6) and other.test.p_value == rel.test.p_value
    boost = evidence.scorecard(lm, {"reliability": [attr.prompts(QUERY)]}, NEURONS, 2.0, controls=4)
    assert boost.measure("reliability").test.p_value == pytest.approx((1 + 3) / (1 + 4))  # "greater": all but -0.357
    with pytest.raises(QRNError, match="reliability required"):
        evidence.scorecard(lm, {"locality (same group)": [attr.prompts(OTHER)]}, NEURONS, 0.0)


@pytest.mark.integration  # a scorecard beside its plain forwards: seconds
def test_scorecard_on_a_tiny_model_matches_the_plain_forwards(tiny):
    lm = tiny("llama")
    attr = NeuronAttribution(lm)
    rel, gen = attr.prompts(QUERY), attr.prompts(make_query("France's capital is?", list(QUERY.options()), "Paris"))
    card = evidence.scorecard(
        lm,
        {"reliability": [rel], "generalization": [gen], "locality (other groups)": [attr.prompts(OTHER)]},
        NEURONS,
        0.0,
        controls=6,
        seed=1,
    )
    assert [m.name for m in card.measures] == ["reliability", "generalization", "locality (other groups)"]
    m = card.measure("reliability")
    assert m.p_before == pytest.approx(slow_share(lm, rel, None), rel=1e-4)
    assert m.p_after == pytest.approx(slow_share(lm, rel, evidence.scaled(NEURONS, 0.0)), rel=1e-4)
    first = matched_controls(NEURONS, evidence.layer_sizes(lm), 6, seed=1)[0]
    assert m.test.controls[0] == pytest.approx(slow_share(lm, rel, evidence.scaled(first, 0.0)) - m.p_before, abs=1e-5)
    table = card.table()
    assert len(table) == 3 and table["p_value"].between(1 / 7, 1).all() and card.controls == 6
    with pytest.raises(QRNError, match="--controls is 0"):
        evidence.scorecard(lm, {"reliability": [rel]}, NEURONS, 0.0, controls=0)
    with pytest.raises(QRNError, match="not a finite number"):
        evidence.scorecard(lm, {"reliability": [rel]}, NEURONS, math.inf)


def test_flip_points_by_hand():
    xs = np.array([-1.0, 0.0, 1.0, 2.0])
    below, above = evidence.flip_points(xs, np.array([-0.3, -0.1, 0.2, 0.4]))
    assert below == pytest.approx(1 / 3) and math.isnan(above)  # between 0 (-0.1) and 1 (+0.2)
    below, above = evidence.flip_points(xs, np.array([0.5, 0.1, -0.2, 0.2]))
    assert below == pytest.approx(1 / 3) and above == pytest.approx(1.5)  # wrong at 1: right again either side


def test_dose_response_flip_multiplier_by_hand_on_a_fake(tiny, monkeypatch):
    """The correct letter's raw probability is 0.1 (m + 1) + 0.05 under set a, 0.5 under set b; the best other
    option's is 0.2 and two more 0.1, so set a's answer flips between the sweep points 0.25 and 0.75 and set b's
    never."""
    lm = tiny("llama")
    prompts = NeuronAttribution(lm).prompts(QUERY)

    def fake(lm, queries, edits, *a):
        out = np.zeros((len(edits), len(prompts), 4))
        for e, edit in enumerate(edits):
            m = next(iter(edit.values()))
            x = 0.1 * (m + 1) + 0.05 if (0, 5) in edit else 0.5
            for i, p in enumerate(prompts):
                out[e, i] = 0.1
                out[e, i, (p.correct + 1) % 4] = 0.2
                out[e, i, p.correct] = x
        return out

    monkeypatch.setattr(evidence, "probs_under_edits", fake)
    dose = evidence.dose_response(lm, prompts, {"a": [(0, 5)], "b": [(1, 1), (2, 2)]}, [-1, 0, 0.25, 0.75, 2, 4])
    assert dose.multipliers.tolist() == [-1, 0, 0.25, 0.75, 1, 2, 4]  # 1 added
    lo, hi = (0.175 - 0.2) / (0.175 + 0.4), (0.225 - 0.2) / (0.225 + 0.4)  # renormalised margins at 0.25 and 0.75
    assert dose.flip_below[0] == pytest.approx(0.25 + (0 - lo) * 0.5 / (hi - lo)) and math.isnan(dose.flip_above[0])
    assert math.isnan(dose.flip_below[1]) and math.isnan(dose.flip_above[1]) and dose.sizes == (1, 2)
    share = lambda x: x / (x + 0.4)  # noqa: E731
    assert dose.p_correct[0] == pytest.approx([share(0.1 * (m + 1) + 0.05) for m in dose.multipliers])
    assert dose.accuracy[0].tolist() == [0, 0, 0, 1, 1, 1, 1] and (dose.accuracy[1] == 1).all()
    assert len(dose.table()) == 14 and dose.flips()["set"].tolist() == ["a", "b"]


def test_dose_response_on_a_tiny_model_is_the_unedited_model_at_1(tiny):
    lm = tiny("llama")
    prompts = NeuronAttribution(lm).prompts(QUERY)
    dose = evidence.dose_response(lm, prompts, {"a": NEURONS, "b": NEURONS[:1]}, [0.0, 2.0])
    assert dose.p_correct[:, 1] == pytest.approx([slow_share(lm, prompts, None)] * 2, rel=1e-4)
    assert dose.p_correct[0, 0] == pytest.approx(slow_share(lm, prompts, evidence.scaled(NEURONS, 0.0)), rel=1e-4)


@pytest.mark.integration  # one forward per neuron beside the plain ones: seconds
def test_neuron_effects_are_each_neuron_edited_alone(tiny):
    lm = tiny("gemma3")
    prompts = NeuronAttribution(lm).prompts(QUERY)
    effects = evidence.neuron_effects(lm, prompts, NEURONS, 0.0)
    assert effects.p_before == pytest.approx(slow_share(lm, prompts, None), rel=1e-4)
    assert effects.p_all == pytest.approx(slow_share(lm, prompts, evidence.scaled(NEURONS, 0.0)), rel=1e-4)
    for neuron, p in zip(effects.neurons, effects.p_alone):
        assert p == pytest.approx(slow_share(lm, prompts, {neuron: 0.0}), rel=1e-4)
    table = effects.table()
    assert np.all(np.diff(table["change"].abs()) <= 0) and len(table) == 4


def test_group_edit_measures_every_group_on_its_held_out_queries(tiny):
    lm = tiny("llama")
    attr = NeuronAttribution(lm)
    held = {"geography": [attr.prompts(QUERY)], "science": [attr.prompts(OTHER)]}
    card = evidence.group_edit(lm, held, "geography", NEURONS, 0.0, controls=5)
    assert [m.name for m in card.measures] == ["geography", "science"] and card.edited == "group geography"
    geo = card.measure("geography")
    assert geo.p_after == pytest.approx(slow_share(lm, held["geography"][0], evidence.scaled(NEURONS, 0.0)), rel=1e-4)
    assert card.controls == 5 and geo.test.alternative == "less"
    with pytest.raises(QRNError, match="group 'history' has no held-out queries"):
        evidence.group_edit(lm, held, "history", NEURONS)


def test_ngram_entropy_by_hand_and_fluency_of_a_tiny_model(tiny):
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # bigrams (a b) twice, (b a) once
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)  # trigrams: two, once each
    assert ngram_entropy("yes yes yes yes") == 0 and ngram_entropy("yes") == 0
    lm = tiny("llama")
    out = fluency(lm, QUERY.question, evidence.scaled(NEURONS, 0.0), max_new_tokens=6)
    assert out.before and out.entropy_before >= 0 and out.question == QUERY.question


# --- the lab on a stored run, and `qrn lab` ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory, tiny) -> str:
    """A finished tiny-llama run of three science and three geography queries (synthetic attributions)."""
    from seeded_store import seed_store

    path = tmp_path_factory.mktemp("lab") / "qrn.duckdb"
    seed_store(path, tiny("llama"))
    return str(path)


def test_lab_scorecard_of_a_stored_query_asks_the_runs_prompts(tiny, lab_db):
    from qrcore.evaluation import lab
    from seeded_store import RUN

    lm, run = tiny("llama"), lab.read_lab(RUN, lab_db)
    card = lab.query_scorecard(
        lm, run, "sci-1", edit=lab.ControlledEdit(controls=5), locality=1, paraphrases=["Plants take in which gas?"]
    )
    assert [(m.name, m.queries) for m in card.measures] == [
        ("reliability", 1),
        ("generalization", 2),  # its options in another order, the paraphrase
        ("locality (same group)", 1),
        ("locality (other groups)", 1),
    ]
    neurons = run.neurons("sci-1")
    assert card.neurons == tuple(neurons) and len(neurons) > 0
    prompts = run.prompter(lm).prompts(run.query("sci-1"))
    rel = card.measure("reliability")
    assert rel.p_after == pytest.approx(slow_share(lm, prompts, evidence.scaled(neurons, 0.0)), rel=1e-4)
    assert [p.correct for p in run.prompter(lm, shuffle=1).prompts(run.query("sci-1"))] != [p.correct for p in prompts]
    with pytest.raises(QRNError, match="run 'tiny-run' has no query 'nope'"):
        lab.query_scorecard(lm, run, "nope")


def test_lab_group_edit_uses_the_groups_other_queries_neurons_and_measures_held_out_queries(tiny, lab_db):
    from qrcore.evaluation import lab
    from seeded_store import RUN

    lm, run = tiny("llama"), lab.read_lab(RUN, lab_db)
    assert run.held_out() == {"geography": ["geo-1"], "science": ["sci-1"]}
    card = lab.group_scorecard(lm, run, "science", edit=lab.ControlledEdit(controls=3))
    assert set(card.neurons) == set(run.neurons("sci-2")) | set(run.neurons("sci-3"))  # sci-1 is held out
    assert [(m.name, m.queries) for m in card.measures] == [("geography", 1), ("science", 1)]
    assert card.edited == "group science" and card.controls == 3
    with pytest.raises(QRNError, match="has no group 'art'; its groups are geography, science"):
        lab.group_scorecard(lm, run, "art")


@pytest.mark.integration  # several `qrn lab` commands
def test_qrn_lab_prints_the_scorecard_the_sweep_and_one_line_for_bad_input(lab_db, capsys, monkeypatch):
    from qrcore.cli import main
    from seeded_store import RUN

    args = ["lab", "--run", RUN, "--model", "tiny-llama", "--db", lab_db]
    assert main([*args, "--query", "sci-1", "--controls", "5", "--locality", "1"]) == 0
    out = capsys.readouterr().out
    assert "scorecard: query sci-1, qrnca" in out and "5 draws of random neurons with the same layers" in out
    for measure in ("reliability", "generalization", "locality (same group)", "locality (other groups)", "p_value"):
        assert measure in out
    assert main([*args, "--query", "sci-1", "--sweep"]) == 0
    out = capsys.readouterr().out
    assert "dose-response of query sci-1" in out and "where the answer flips" in out and "qrnca" in out
    assert main([*args, "--group", "geography", "--controls", "2"]) == 0
    assert "scorecard: group geography" in capsys.readouterr().out
    monkeypatch.setattr("qrcore.cli._load", lambda args: pytest.fail("a model was loaded"))
    assert main([*args, "--query", "nope"]) == 2
    assert capsys.readouterr().err == (
        f"qrn: error: run '{RUN}' has no query 'nope'; its queries are e.g. sci-1, sci-2, sci-3.\n"
    )
    assert main([*args, "--query", "sci-1", "--controls", "0"]) == 2
    assert capsys.readouterr().err == "qrn: error: --controls is 0; it must be at least 1.\n"
    assert main([*args, "--group", "science", "--sweep"]) == 2
    assert "pass --query instead of --group" in capsys.readouterr().err


def test_held_out_rule_is_one_function_for_the_lab_and_the_evaluation(lab_db):
    from qrcore.evaluation import lab
    from qrcore.evaluation.evaluate import held_out
    from seeded_store import RUN

    ids = [f"q{i}" for i in range(12)]
    assert held_out({"g": ids, "h": ids[:3]}) == {"g": ["q0", "q5", "q10"], "h": ["q0"]}
    run = lab.read_lab(RUN, lab_db)
    assert run.held_out() == held_out(run.groups())


def test_controlled_edit_refuses_bad_values_in_one_line():
    from qrcore.evaluation.lab import ControlledEdit

    with pytest.raises(QRNError, match=r"^--controls is 0; it must be at least 1\.$"):
        ControlledEdit(0.0, 0)
    with pytest.raises(QRNError, match="multiplier nan is not a finite number"):
        ControlledEdit(float("nan"))


@pytest.mark.integration  # attributes a question, then scores the edit: seconds
def test_lab_edit_of_chosen_neurons_for_a_question_of_ones_own(tiny, lab_db):
    from qrcore.evaluation import lab
    from seeded_store import RUN

    lm, run = tiny("llama"), lab.read_lab(RUN, lab_db)
    own = make_query("Which gas do we breathe out?", ["Carbon dioxide", "Oxygen", "Argon"], "Carbon dioxide")
    neurons = [(0, 5), (2, 40), (3, 95)]
    edit = lab.ControlledEdit(0.0, 4, 1)
    card = lab.edit_scorecard(lm, run, own, neurons, "mine", edit, locality=2)
    prompts = run.prompter(lm).prompts(own)
    rel = card.measure("reliability")
    assert rel.p_after == pytest.approx(slow_share(lm, prompts, evidence.scaled(neurons, 0.0)), rel=1e-4)
    assert card.measure("locality (other groups)").queries == 2 and card.controls == 4
    dose = lab.edit_sweep(lm, run, own, {"mine": neurons, "none": []})
    assert dose.names == ("mine",)  # an empty set is left out
    at = list(dose.multipliers).index(0.0)
    assert dose.p_correct[0, at] == pytest.approx(rel.p_after, rel=1e-4)
    band = lab.control_sweep(lm, run, own, neurons, edit)
    draws = matched_controls(neurons, evidence.layer_sizes(lm), 4, 1)
    assert band.names == ("control 1", "control 2", "control 3", "control 4")
    assert band.p_correct[2, at] == pytest.approx(slow_share(lm, prompts, evidence.scaled(draws[2], 0.0)), rel=1e-4)
    effects = lab.edit_neuron_effects(lm, run, own, neurons, 0.0)
    assert effects.p_all == pytest.approx(rel.p_after, rel=1e-4)
    assert effects.p_alone[1] == pytest.approx(slow_share(lm, prompts, {(2, 40): 0.0}), rel=1e-4)
