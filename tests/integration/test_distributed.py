"""Data-parallel runs (tiny-llama): 2 processes store what 1 does, a killed run resumes, a run's shards carry it to
another store, foreign shards are refused."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from qrcore import store
from qrcore.attribution.ig import NeuronAttribution
from qrcore.cli import main
from qrcore.errors import QRNError
from qrcore.runs import shards
from qrcore.runs.batch import run_dataset
from qrcore.runs.distributed import run_distributed
from qrcore.settings import QRNCASettings, RunSettings

RUN = ["run", "--model", "tiny-llama", "--dataset", "domain", "--groups", "biology"]
TABLES = {
    "attributions": "query_id, layer, neuron, na, in_cluster, ig",
    "top_activations": "query_id, layer, neuron, activation",
    "query_results": "query_id, correct_prob, accuracy",
}


def qrn(*args: str) -> subprocess.Popen:
    """`qrn ARGS` in a subprocess (its own session, so the test can kill the whole launch)."""
    return subprocess.Popen(
        [sys.executable, "-m", "qrcore.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def rows(db: str) -> dict[str, pd.DataFrame]:
    """Every stored query row of the store's only run, sorted."""
    with store.connect(db, read_only=True) as con:
        return {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").df() for t, cols in TABLES.items()}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """`qrn run --processes 2` of 6 biology queries: (db, run folder)."""
    tmp = tmp_path_factory.mktemp("two")
    proc = qrn(*RUN, "--per-group", "6", "--processes", "2", "--db", str(tmp / "two.duckdb"), "--shards", str(tmp))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    (folder,) = [p.parent for p in tmp.glob("*/manifest.json")]
    return str(tmp / "two.duckdb"), folder


def test_two_processes_store_what_one_process_does(two, tiny, tmp_path):
    db, folder = two
    one = str(tmp_path / "one.duckdb")
    run_id = run_dataset(tiny("llama"), "domain", one, groups=["biology"], per_group=6)
    assert folder.name == run_id
    assert sorted(p.parent.name for p in folder.glob("rank-*/*.parquet")) == ["rank-0"] * 3 + ["rank-1"] * 3
    expected, got = rows(one), rows(db)
    for table, frame in expected.items():
        # Two processes of 1 thread sum in another order than one of 2 threads: floats agree to float32 rounding
        # relative to each column's scale, not bit for bit.
        floats = [c for c in frame if frame[c].dtype.kind == "f" or c == "ig"]
        pd.testing.assert_frame_equal(got[table].drop(columns=floats), frame.drop(columns=floats))
        for column in floats:
            want, have = np.stack(frame[column]).astype(np.float64), np.stack(got[table][column]).astype(np.float64)
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=column)
    with store.connect(db, read_only=True) as con:
        info = store.run_info(con, run_id)
        assert info.status == "finished" and info.n_clusters == 6 and len(store.qr_neurons(con, run_id)) > 0


def test_killed_run_resumes_with_nothing_lost_or_twice(tiny, tmp_path):
    db = str(tmp_path / "kill.duckdb")
    proc = qrn(*RUN, "--per-group", "12", "--processes", "2", "--db", db, "--shards", str(tmp_path))
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*/rank-*/*.parquet"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    launched = psutil.Process(proc.pid)
    tree = [launched, *launched.children(recursive=True)]  # qrn, accelerate's launcher (torchrun) and both workers
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=30)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/rank-*/*.parquet")}
    assert 3 <= len(before) < 12, "the run was not caught in the middle"
    # the rerun, here as one process, computes only what no shard holds and merges everything once
    run_id = run_distributed(tiny("llama"), "domain", db, groups=["biology"], per_group=12, root=tmp_path)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())
    with store.connect(db, read_only=True) as con:
        assert len(store.done_query_ids(con, run_id)) == 12 and store.run_info(con, run_id).status == "finished"
        assert con.execute("SELECT count(*) = count(DISTINCT (query_id, layer, neuron)) FROM attributions").fetchone()[
            0
        ]


def test_merge_of_a_copied_run_and_refusal_of_foreign_shards(two, tiny, tmp_path):
    _, folder = two
    copy = shutil.copytree(folder, tmp_path / folder.name)
    assert shards.merge_shards(copy, str(tmp_path / "fresh.duckdb"))[1] == 6  # a run from elsewhere into a new store
    manifest = shards.read_manifest(copy)
    query = shards.queries_of(manifest)[1]
    other_settings = RunSettings(qrnca=QRNCASettings(v=5))
    attr = NeuronAttribution(tiny("llama")).attribute(query)
    key = shards.key_of(manifest)
    shards.write_shard(copy, 1, {**key, "settings": other_settings.to_json()}, attr, other_settings.qrnca)
    with pytest.raises(
        QRNError,
        match=r"^shard rank-1/biology-002.parquet was made with settings \(qrnca.v 20 -> 5\); "
        r"merge only shards of one run$",
    ):
        shards.merge_shards(copy, str(tmp_path / "other.duckdb"))
    gpt2 = tiny("gpt2")
    shards.write_shard(
        copy, 1, {**key, "model": gpt2.fingerprint}, NeuronAttribution(gpt2).attribute(query), QRNCASettings()
    )
    with pytest.raises(
        QRNError,
        match=rf"^shard rank-1/biology-002.parquet was made with model \({key['model']} -> "
        rf"{gpt2.fingerprint}\); merge only shards of one run$",
    ):
        shards.merge_shards(copy, str(tmp_path / "other.duckdb"))


def test_one_process_with_shards_carries_its_run_to_a_new_store(tiny, tmp_path, monkeypatch):
    first, second = str(tmp_path / "first.duckdb"), str(tmp_path / "second.duckdb")
    assert main([*RUN, "--per-group", "4", "--db", first, "--shards", str(tmp_path / "here")]) == 0
    (folder,) = [p.parent for p in (tmp_path / "here").glob("*/manifest.json")]
    assert sorted(p.name for p in folder.glob("rank-0/*.parquet")) == [f"biology-00{i}.parquet" for i in range(1, 5)]
    carried = shutil.copytree(tmp_path / "here", tmp_path / "there")  # the folder copied to another machine

    def recompute(*_args, **_kwargs):
        raise AssertionError("a query in a shard was attributed again")

    monkeypatch.setattr(NeuronAttribution, "attribute", recompute)
    assert main([*RUN, "--per-group", "4", "--db", second, "--shards", str(carried)]) == 0
    for table, frame in rows(first).items():
        pd.testing.assert_frame_equal(rows(second)[table], frame, obj=table)
    with store.connect(second, read_only=True) as con:
        assert store.run_info(con, folder.name).status == "finished"
