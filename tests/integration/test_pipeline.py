"""A run end to end on a tiny model: store rows, cache hit, resume after a kill, evaluations, report, export."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.queries import Query
from qrcore.editing.scaling import SUPPRESS, correct_probs, letter_probs
from qrcore.editing.vocab import project_neurons
from qrcore.errors import QRNError
from qrcore.evaluation import evaluate, run_analyses
from qrcore.evaluation.evaluate import evaluate_run
from qrcore.evaluation.report import write_report
from qrcore.runs.batch import run_dataset
from qrcore.selection import analysis
from qrcore.selection.contrast import Pair
from qrcore.settings import QRNCASettings, RunSettings


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished run of two groups x 3 queries of the domain set on tiny-llama."""
    db = str(tmp_path_factory.mktemp("run") / "qrn.duckdb")
    calls = []
    run_id = run_dataset(
        tiny("llama"),
        "domain",
        db,
        name="r",
        groups=["biology", "physics"],
        per_group=3,
        progress=lambda done, total, qid: calls.append((done, total)),
    )
    assert calls[-1] == (6, 6)
    return db, run_id


def test_run_stores_every_query_and_run_level_results(finished):
    db, run_id = finished
    with store.connect(db, read_only=True) as con:
        assert len(store.done_query_ids(con, run_id)) == 6
        info = store.run_info(con, run_id)
        assert info.status == "finished" and info.n_clusters == 6
        assert store.heatmap_groups(con, run_id) == ["biology", "physics"]
        assert run_analyses.heatmap(con, run_id, "biology").shape == (4, 96)
        qr = store.qr_neurons(con, run_id)
        assert set(qr["query_id"]) <= store.done_query_ids(con, run_id) and len(qr) > 0


def test_same_run_again_is_a_cache_hit_without_forward(finished, tiny, monkeypatch):
    db, run_id = finished

    def forbidden(*_a, **_k):
        raise AssertionError("model forward on a cache hit")

    monkeypatch.setattr("qrcore.attribution.ig.NeuronAttribution.attribute", forbidden)
    assert run_dataset(tiny("llama"), "domain", db, name="r", groups=["biology", "physics"], per_group=3) == run_id


def test_conflicting_settings_under_the_same_name_are_refused(finished, tiny):
    db, _ = finished
    other = RunSettings(qrnca=QRNCASettings(v=5))
    with pytest.raises(QRNError, match=r"qrnca.v 20 -> 5"):
        run_dataset(tiny("llama"), "domain", db, name="r", settings=other, groups=["biology", "physics"], per_group=3)


def test_unknown_group_and_dataset_messages(finished, tiny):
    db, _ = finished
    with pytest.raises(QRNError, match=r"^unknown group\(s\) botany; this dataset has biology"):
        run_dataset(tiny("llama"), "domain", db, groups=["botany"])
    with pytest.raises(QRNError, match=r"^unknown dataset 'nope'; use one of domain, language"):
        run_dataset(tiny("llama"), "nope", db)


def test_evaluations_and_report(finished, tiny, tmp_path):
    db, run_id = finished
    frame = evaluate_run(tiny("llama"), run_id, db, per_group=3)
    with store.connect(db, read_only=True) as con:
        stored = store.evaluations(con, run_id)
    assert len(stored) == len(frame) > 0
    pcr = stored[(stored["metric"] == "pcr") & (stored["group_name"] == "all")]
    assert set(pcr["method"]) == {"qrnca", "random", "activation", "kn", "qrnca_no_ica", "qrnca_with_common"}
    suppress = stored[
        (stored["method"] == "qrnca")
        & (stored["evaluation"] == "suppress")
        & (stored["metric"] == "related_change")
        & (stored["group_name"] == "all")
    ]
    assert suppress["value"].iloc[0] != 0  # zeroing a query's own neurons moves its probability
    answers = stored[stored["evaluation"] == "answer_prediction"].pivot_table(
        index=["method", "group_name"], columns="metric", values="value"
    )
    assert set(answers.index.get_level_values("method")) == set(pcr["method"])
    assert (answers["chance"] == 0.25).all()  # four options
    assert answers[["accuracy", "prompt_accuracy"]].stack().between(0, 1).all()
    # every method's row holds the same prompt-based accuracy of the same held-out queries
    assert answers["prompt_accuracy"].groupby("group_name").nunique().eq(1).all()
    paths = write_report(run_id, db, str(tmp_path)).paths
    report = paths[0].read_text()
    assert "## pcr" in report and "## answer_prediction" in report and r"prompt\_accuracy" in report  # escaped text
    assert "## qr_neurons" in report and "common neurons in 6 clusters" in report
    accuracy = pd.read_csv(tmp_path / "r" / "accuracy.csv").set_index("group_name")
    with store.connect(db, read_only=True) as con:
        per_query = con.execute("SELECT accuracy, correct_prob FROM query_results WHERE run_id = ?", [run_id]).df()
    assert accuracy.loc["all", "queries"] == len(per_query) == accuracy["queries"].drop("all").sum()
    assert np.isclose(accuracy.loc["all", "accuracy"], per_query["accuracy"].mean())
    assert np.isclose(accuracy.loc["all", "correct_prob"], per_query["correct_prob"].mean())
    assert "IG m=16 (linspace points); cluster t=0.2 (template), Z=cluster_sum; common u=0.3; top-v=20" in report
    assert r"| Knowledge Neuron\* | boost |" in report and "| kn |" not in report  # the paper's names for readers
    assert "\nkn,boost," in (tmp_path / "r" / "pcr.csv").read_text()  # the ids for programs


def test_report_with_the_model_has_table_5_of_common_and_most_shared_qr_neurons(finished, tiny, tmp_path):
    db, run_id = finished
    lm = tiny("llama")
    write_report(run_id, db, str(tmp_path), lm)
    common = pd.read_csv(tmp_path / "r" / "common_vocab.csv")
    shared = pd.read_csv(tmp_path / "r" / "group_vocab.csv")
    with store.connect(db, read_only=True) as con:
        expected_common = run_analyses.common_neurons(con, run_id)
        qr = store.qr_neurons(con, run_id)
        groups = store.run_groups(con, run_id)
    assert common[["layer", "neuron"]].values.tolist() == expected_common[["layer", "neuron"]].values.tolist()
    for group, rows in shared.groupby("group_name"):
        own = qr[qr["query_id"].map(groups) == group]
        counts = own.groupby(["layer", "neuron"]).size()
        assert len(rows) == min(3, len(counts))
        assert rows["queries"].tolist() == sorted(counts, reverse=True)[: len(rows)]  # the most shared first
        for row in rows.itertuples():
            assert counts[(row.layer, row.neuron)] == row.queries
    neurons = list(zip(shared["layer"], shared["neuron"]))
    projected = project_neurons(lm, [(int(l), int(n)) for l, n in neurons], 8)
    assert shared["tokens"].tolist() == [" ".join(repr(t) for t in tokens) for tokens in projected["tokens"]]
    assert "## group_vocab" in (tmp_path / "r" / "report.md").read_text()


def test_report_with_another_model_is_refused_before_writing(finished, tiny, tmp_path):
    db, run_id = finished
    with pytest.raises(QRNError, match="was computed with model .*use the run's model"):
        write_report(run_id, db, str(tmp_path), tiny("qwen2"))
    assert not (tmp_path / "r").exists()


def test_group_contrast_by_naica_is_the_difference_of_the_groups_heatmaps_per_query(finished):
    """Oracle: Fig. 5's stored heatmaps (NAICA summed over a group's queries), each divided by its group's size."""
    db, run_id = finished
    with store.connect(db, read_only=True) as con:
        got = run_analyses.group_contrast(con, run_id, Pair("biology", "physics"), "naica")
        expected = run_analyses.heatmap(con, run_id, "biology") / 3 - run_analyses.heatmap(con, run_id, "physics") / 3
        with pytest.raises(QRNError, match="the run has no group 'chemistry'; groups: biology, physics"):
            run_analyses.group_contrast(con, run_id, Pair("biology", "chemistry"))
    layers, neurons = got["layer"].to_numpy(), got["neuron"].to_numpy()
    np.testing.assert_allclose(got["difference"], expected[layers, neurons], rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(expected) == np.count_nonzero(got["difference"])  # no separating neuron left out
    assert got["difference"].abs().is_monotonic_decreasing


def test_stored_changes_and_flips_equal_each_query_edited_alone_on_whole_prompts(finished, tiny):
    """The evaluation packs every edit of a query and its control into one forward; its Table 4 change and Table 6
    flips equal the plain computation: each query's QR neurons suppressed, each whole prompt run on its own."""
    db, run_id = finished
    lm = tiny("llama")
    frame = evaluate_run(lm, run_id, db)
    with store.connect(db, read_only=True) as con:
        queries = {q.id: q for q in store.load_queries(con, store.run_dataset_id(con, run_id))}
        qr = store.qr_neurons(con, run_id, "qrnca")
    attr = NeuronAttribution(lm)
    changes, before, after, correct = [], [], [], []
    for qid, part in qr.groupby("query_id"):
        prompts = attr.prompts(queries[qid])
        edit = {(layer, neuron): SUPPRESS for layer, neuron in zip(part["layer"], part["neuron"])}
        b, a = letter_probs(lm, prompts), letter_probs(lm, prompts, edit)  # (templates, options) each
        changes.append(analysis.percent_change(correct_probs(b, prompts).mean(), correct_probs(a, prompts).mean()))
        before, after, correct = [*before, *b], [*after, *a], [*correct, *(p.correct for p in prompts)]
    flips = analysis.flip_rates(np.array(before), np.array(after), np.array(correct))
    suppress = frame[
        (frame["method"] == "qrnca") & (frame["evaluation"] == "suppress") & (frame["group_name"] == "all")
    ]
    value = suppress.set_index("metric")["value"]
    assert len(changes) == 6 and abs(value["related_change"]) > 0
    assert value["related_change"] == pytest.approx(np.mean(changes), rel=1e-4)
    assert value["correct_to_incorrect"] == pytest.approx(flips.correct_to_incorrect)


def test_killed_evaluation_resumes_from_its_checkpoint_and_computes_only_the_rest(finished, tiny, monkeypatch):
    db, run_id = finished
    lm = tiny("llama")
    steps = []
    whole = evaluate_run(lm, run_id, db, progress=lambda *step: steps.append(step))
    assert [s[:2] for s in steps] == [(i, 8) for i in range(1, 9)]  # 6 edited queries, then 2 held out (one a group)
    assert [s[2] for s in steps[6:]] == ["held out biology-001", "held out physics-001"]
    checkpoint = next(Path(db).parent.glob(".*.evaluating-*.npz"), None)
    assert checkpoint is None  # removed once the numbers are stored

    def killed_after_two(done: int, _total: int, _qid: str) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_run(lm, run_id, db, progress=killed_after_two)
    (checkpoint,) = Path(db).parent.glob(f".{Path(db).name}.evaluating-{run_id}.npz")
    assert len(np.load(checkpoint).files) == 1 + 2  # the key and the two finished queries
    computed = []
    real = evaluate.letter_probs_under
    monkeypatch.setattr(evaluate, "letter_probs_under", lambda *a: computed.append(1) or real(*a))
    resumed = evaluate_run(lm, run_id, db)
    assert len(computed) == 6 - 2
    assert not checkpoint.exists()
    pd.testing.assert_frame_equal(resumed, whole, rtol=1e-5)


def test_evaluation_killed_while_holding_out_resumes_without_computing_any_finished_query(finished, tiny, monkeypatch):
    db, run_id = finished
    lm = tiny("llama")
    whole = evaluate_run(lm, run_id, db)

    def killed_after_first_held_out(done: int, _total: int, _qid: str) -> None:
        if done == 7:  # 6 edited queries, then the first of 2 held out
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_run(lm, run_id, db, progress=killed_after_first_held_out)
    (checkpoint,) = Path(db).parent.glob(f".{Path(db).name}.evaluating-{run_id}.npz")
    assert len(np.load(checkpoint).files) == 1 + 6 + 2  # the key, the edited queries, one held-out query's two
    edited, held_out = [], []
    real_probs, real_held_out = evaluate.letter_probs_under, evaluate.held_out_activations
    monkeypatch.setattr(evaluate, "letter_probs_under", lambda *a: edited.append(1) or real_probs(*a))
    monkeypatch.setattr(evaluate, "held_out_activations", lambda *a: held_out.append(1) or real_held_out(*a))
    resumed = evaluate_run(lm, run_id, db)
    assert (len(edited), len(held_out)) == (0, 1)
    assert not checkpoint.exists()
    pd.testing.assert_frame_equal(resumed, whole, rtol=1e-5)


def test_evaluate_if_missing_keeps_existing_evaluations_without_loading_a_model(finished, capsys, monkeypatch):
    from qrcore.cli import main

    db, run_id = finished
    with store.connect(db) as con:
        store.write_evaluations(
            con, run_id, "qrnca", "boost", pd.DataFrame({"group_name": ["all"], "metric": ["pcr"], "value": [7.0]})
        )
        before = store.evaluations(con, run_id)
    monkeypatch.setattr("qrcore.cli._load", lambda args: pytest.fail("no model is needed"))
    assert main(["evaluate", "--run", run_id, "--db", db, "--if-missing"]) in (0, None)
    assert "already has evaluations; nothing to do" in capsys.readouterr().out
    with store.connect(db, read_only=True) as con:
        pd.testing.assert_frame_equal(store.evaluations(con, run_id), before)


def test_export_and_import_round_trip(finished, tmp_path):
    db, run_id = finished
    with store.connect(db, read_only=True) as con:
        counts = store.export_runs(con, [run_id], tmp_path / "export")
        expected = run_analyses.heatmap(con, run_id, "physics")
    assert counts["runs"] == 1 and counts["queries"] == 6
    fresh = str(tmp_path / "fresh.duckdb")
    with store.connect(fresh) as con:
        assert store.import_runs(con, tmp_path / "export") is True
        assert store.import_runs(con, tmp_path / "export") is False  # already there: nothing doubled
        assert np.array_equal(run_analyses.heatmap(con, run_id, "physics"), expected)


def test_import_loads_only_missing_runs_and_renames_one_whose_name_is_taken(finished, tmp_path):
    db, run_id = finished
    with store.connect(db, read_only=True) as con:
        store.export_runs(con, [run_id], tmp_path / "a")
        name, results = store.run_info(con, run_id).name, len(store.group_accuracy(con, run_id))
    other = "feedfacecafe0000"  # the same run recomputed under other settings: another id, the same name
    (tmp_path / "both").mkdir()
    for table in (tmp_path / "a").glob("*.parquet"):
        rows = pd.read_parquet(table)
        if "run_id" in rows:
            rows = pd.concat([rows, rows.assign(run_id=other)])
        rows.to_parquet(tmp_path / "both" / table.name, index=False)
    fresh = str(tmp_path / "fresh.duckdb")
    with store.connect(fresh) as con:
        assert store.import_runs(con, tmp_path / "a") is True
        assert store.import_runs(con, tmp_path / "both") is True  # loads the other run only
        assert dict(zip(store.list_runs(con)["run_id"], store.list_runs(con)["name"])) == {
            run_id: name,
            other: f"{name}-feedface",
        }
        for run in (run_id, other):
            count = con.execute("SELECT count(*) FROM query_results WHERE run_id = ?", [run]).fetchone()[0]
            assert count == 6 and len(store.group_accuracy(con, run)) == results  # nothing doubled
        assert np.array_equal(run_analyses.heatmap(con, other, "physics"), run_analyses.heatmap(con, run_id, "physics"))
        assert store.import_runs(con, tmp_path / "both") is False


def test_killed_run_resumes_with_nothing_lost_or_doubled(tmp_path):
    db = str(tmp_path / "kill.duckdb")
    cmd = [
        sys.executable,
        "-m",
        "qrcore.cli",
        "run",
        "--dataset",
        "domain",
        "--groups",
        "biology",
        "--model",
        "tiny-llama",
        "--db",
        db,
        "--name",
        "k",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done = 0
    deadline = time.time() + 120
    while done < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if os.path.exists(db):
            try:
                with store.connect(db, read_only=True, wait=0.2) as con:
                    runs = store.list_runs(con)
                    done = len(store.done_query_ids(con, runs["run_id"][0])) if len(runs) else 0
            except QRNError:
                pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 5 <= done < 55, "the run was not caught in the middle"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with store.connect(db, read_only=True) as con:
        run_id = store.list_runs(con)["run_id"][0]
        assert len(store.done_query_ids(con, run_id)) == 55
        rows = con.execute("SELECT count(*), count(DISTINCT (query_id, layer, neuron)) FROM attributions").fetchone()
        assert rows[0] == rows[1]
        assert store.run_info(con, run_id).status == "finished"


def test_evaluate_a_run_of_ready_made_prompts(tiny, tmp_path):
    """Imported prompts carry letters but no option texts, and a query's templates may offer different numbers of
    options (the paper's language set does): chance comes from each template's letters."""
    db = str(tmp_path / "qrn.duckdb")
    three, four = " A. x\n B. y\n C. z\n", " A. x\n B. y\n C. z\n D. w\n"
    queries = [
        Query(
            id=f"{g}{i}",
            group=g,
            question=f"Pick {g} {i}\n{three}",
            answer="y",
            prompts=(f"Pick {g} {i}\n{three}", f"Choose {g} {i}\n{four}"),
            labels=("ABC"[i % 3], "ABCD"[i]),
        )
        for g in ("g1", "g2")
        for i in range(3)
    ]
    with store.connect(db) as con:
        store.upsert_dataset(con, "ready", "test", queries)
    run_id = run_dataset(tiny("llama"), "ready", db, name="ready-run")
    frame = evaluate_run(tiny("llama"), run_id, db)
    chance = frame[(frame["evaluation"] == "answer_prediction") & (frame["metric"] == "chance")]["value"]
    assert len(chance) > 0 and np.allclose(chance, (1 / 3 + 1 / 4) / 2)
    flips = frame[frame["metric"] == "correct_to_incorrect"]["value"]
    assert len(flips) > 0 and flips.between(0, 1).all()
