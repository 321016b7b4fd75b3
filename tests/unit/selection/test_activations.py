"""What makes a neuron fire: every neuron's top queries in one pass per prompt against a plain forward with a hook on
the up projection, the running top-k against a full sort, the per-token view, and `qrn activations`' store rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.errors import QRNError
from qrcore.runs.activations import plan_activations, store_activations
from qrcore.selection.activations import MAX_TOKENS, TopQueries, token_activations, top_queries
from qrcore.settings import RunSettings
from seeded_store import QUERIES, RUN, seed_store


def up_projection(lm, layer: int) -> tuple[torch.nn.Module, slice]:
    """The module whose output holds f, written out per architecture (the oracle's own lookup), and f's columns."""
    if hasattr(lm.model, "transformer"):  # GPT-2: the input of the activation function, c_fc's output
        return lm.model.transformer.h[layer].mlp.c_fc, slice(None)
    mlp = lm.model.model.layers[layer].mlp
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: [gate | up], f is the second half
        width = mlp.gate_up_proj.out_features // 2
        return mlp.gate_up_proj, slice(width, None)
    return mlp.up_proj, slice(None)


def plain_f(lm, layer: int, neuron: int, ids: list[int]) -> np.ndarray:
    """(tokens,) the neuron's f on every token: a plain forward with one hook, removed after it."""
    module, cols = up_projection(lm, layer)
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out[0, :, cols][:, neuron].detach()))
    try:
        with torch.no_grad():
            lm.model(torch.tensor([ids]))
    finally:
        handle.remove()
    return seen[0].numpy()


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_top_k_fold_equals_a_full_sort():
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(23, 3, 7)).astype(np.float32)  # (queries, layers, neurons)
    ids = [f"q{i}" for i in range(len(acts))]
    top = TopQueries.empty((3, 7), k=5)
    for qid, a in zip(ids, acts):
        top.add(qid, a)
    rows = top.rows()
    assert len(rows) == 3 * 7 * 5
    for (layer, neuron), part in rows.groupby(["layer", "neuron"]):
        order = np.argsort(-acts[:, layer, neuron], kind="stable")[:5]
        assert part["query_id"].tolist() == [ids[i] for i in order]
        np.testing.assert_array_equal(part["activation"].to_numpy(), acts[order, layer, neuron])
    again = TopQueries.from_rows(rows, top.query_ids, (3, 7), k=5)
    assert again.rows().equals(rows)


def test_fewer_queries_than_k_keeps_them_all():
    top = TopQueries.empty((1, 2), k=4)
    top.add("a", np.array([[1.0, -2.0]], np.float32))
    top.add("b", np.array([[0.5, 3.0]], np.float32))
    rows = top.rows()
    assert rows[["neuron", "query_id"]].values.tolist() == [[0, "a"], [0, "b"], [1, "b"], [1, "a"]]
    with pytest.raises(ValueError, match="added already"):
        top.add("a", np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="not \\(layers, neurons\\)"):
        top.add("c", np.zeros((2, 2), np.float32))


@pytest.mark.integration  # a stored run's activations beside plain forwards on three architectures: seconds
@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_stored_activation_is_the_plain_forwards_f_at_the_answer_position(tiny, arch):
    lm = tiny(arch)
    settings = RunSettings()
    top = top_queries(lm, QUERIES, settings, k=3)
    rows = top.rows().set_index(["layer", "neuron"])
    attr = NeuronAttribution(lm, settings.attribution, settings.prompt)
    for layer, neuron in [(0, 0), (1, 17), (3, 95)]:
        want = {q.id: np.mean([plain_f(lm, layer, neuron, p.input_ids)[-1] for p in attr.prompts(q)]) for q in QUERIES}
        best = sorted(want, key=lambda q: -want[q])[:3]
        got = rows.loc[(layer, neuron)]
        assert got["query_id"].tolist() == best
        np.testing.assert_allclose(got["activation"], [want[q] for q in best], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_token_activations_equal_a_hooked_forward_and_leave_no_hook(tiny, arch):
    lm = tiny(arch)
    ids = lm.tokenizer.encode("The capital of France is Paris.")
    before = hook_count(lm.model)
    got = token_activations(lm, ids, 2, 40)
    assert got.shape == (len(ids),)
    np.testing.assert_allclose(got, plain_f(lm, 2, 40, ids), rtol=1e-5, atol=1e-6)
    assert hook_count(lm.model) == before


def test_token_activations_refuse_bad_input(tiny):
    lm = tiny("llama")
    with pytest.raises(QRNError, match=r"^the text has 0 tokens; type between 1 and 512"):
        token_activations(lm, [], 0, 0)
    with pytest.raises(QRNError, match=f"^the text has {MAX_TOKENS + 1} tokens"):
        token_activations(lm, [1] * (MAX_TOKENS + 1), 0, 0)
    with pytest.raises(QRNError, match=r"^neuron 4:0 is outside this run's model \(layers 0-3, neurons 0-95\)"):
        token_activations(lm, [1, 2], 4, 0)


@pytest.mark.integration  # two `qrn activations` runs over a stored run
def test_qrn_activations_rows_resume_where_a_killed_one_stopped(tiny, tmp_path):
    lm = tiny("llama")
    db = tmp_path / "qrn.duckdb"
    seed_store(db, lm)
    whole = top_queries(lm, QUERIES, RunSettings()).rows()

    def die_after_three(done: int, _total: int, _query: str) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store_activations(lm, RUN, db, die_after_three, every=2)
    plan = plan_activations(RUN, db)
    assert len(plan.done) == 2 and [q.id for q in plan.todo] == [q.id for q in QUERIES[2:]]
    seen = []
    store_activations(lm, RUN, db, lambda done, total, _q: seen.append((done, total)), every=2)
    assert seen[0] == (2, len(QUERIES)) and seen[-1] == (len(QUERIES), len(QUERIES))
    with store.connect(db, read_only=True) as con:
        rows, done = store.read_top_queries(con, plan.info.run_id)
        card = store.neuron_top_queries(con, plan.info.run_id, 1, 17)
    assert sorted(done) == sorted(q.id for q in QUERIES)
    np.testing.assert_allclose(rows["activation"], whole["activation"], rtol=1e-6)
    assert rows["query_id"].tolist() == whole["query_id"].tolist()
    want = whole.loc[(whole["layer"] == 1) & (whole["neuron"] == 17)]
    assert card["query_id"].tolist() == want["query_id"].tolist()
    assert plan_activations(RUN, db).todo == []


def test_qrn_activations_refuses_another_model_before_computing(tiny, tmp_path):
    db = tmp_path / "qrn.duckdb"
    seed_store(db, tiny("llama"))
    with pytest.raises(QRNError, match="was computed with model tiny-llama"):
        store_activations(tiny("gpt2"), RUN, db)
    with store.connect(db, read_only=True) as con:
        assert store.read_top_queries(con, plan_activations(RUN, db).info.run_id)[1] == []


@pytest.mark.integration  # two `qrn activations` runs over a stored run
def test_qrn_activations_command_stores_then_has_nothing_to_do(tiny, tmp_path, capsys):
    from qrcore.cli import main

    db = str(tmp_path / "qrn.duckdb")
    seed_store(tmp_path / "qrn.duckdb", tiny("llama"))
    assert main(["activations", "--run", "nope", "--db", db]) == 2
    assert capsys.readouterr().err == "qrn: error: no run 'nope' in this store; stored runs: tiny-run\n"
    assert main(["activations", "--run", RUN, "--every", "0", "--db", db]) == 2
    assert capsys.readouterr().err == "qrn: error: --every is 0; it must be at least 1.\n"
    assert main(["activations", "--run", RUN, "--model", "tiny-llama", "--db", db]) == 0
    assert "run 'tiny-run': top queries of every neuron over 6 queries stored" in capsys.readouterr().out
    assert main(["activations", "--run", RUN, "--db", db]) == 0
    assert capsys.readouterr().out == "run 'tiny-run' has the top queries of all its 6 queries; nothing to do\n"
