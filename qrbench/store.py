"""Store benchmark: a synthetic run of paper size, and timings of the explorer's readers on it."""

from __future__ import annotations

import json
import os
from pathlib import Path
import statistics
import sys
import time
from typing import Callable, TextIO

import numpy as np
import pandas as pd

from qrcore import store
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.runs import storing
from qrcore.selection import qrnca
from qrcore.settings import RunSettings
from qrcore.store.checksums import failing_block
from qrcore.store.connection import BLOCK_SIZE
from qrcore.store.sql import one_row

RUN_NAME = "synthetic"
COMMON_POOL = 20
"""Neurons shared by all groups; each query draws COMMON_PER_QUERY of them, so each is in ~40% of clusters (common)."""
COMMON_PER_QUERY = 8
GROUP_POOL = 3000
"""Neurons of each group, in a band of layers of its own; they make the heatmaps and overlaps non-trivial."""


def build_synthetic_store(
    path: str | os.PathLike,
    n_queries: int = 10_000,
    n_layers: int = 32,
    n_neurons: int = 11008,
    rows_per_query: int = 150,
    groups: int = 6,
    seed: int = 0,
) -> str:
    """Fill a new store at `path` with one finished synthetic run (bulk inserts + `finalize_run`); returns the run id."""
    if Path(path).exists():
        raise QRNError(f"{path} already exists; the benchmark builds a new store, so pass a path that does not exist")
    rng = np.random.default_rng(seed)
    group_of = np.arange(n_queries) % groups  # (queries,)
    ids = np.array([f"q{i:06d}" for i in range(n_queries)])  # (queries,)
    flat, na = _synthetic_neurons(rng, group_of, n_layers, n_neurons, rows_per_query, groups)  # (queries, rows) each
    s = RunSettings()
    top_value = na.max(axis=1, keepdims=True)  # (queries, 1)
    keep = _first_occurrence(flat)  # (queries, rows) drop duplicate draws
    q_idx = np.nonzero(keep)[0]  # (kept,)
    sparse = pd.DataFrame(
        {
            "query_id": ids[q_idx],
            "layer": (flat[keep] // n_neurons).astype(np.int16),
            "neuron": (flat[keep] % n_neurons).astype(np.int32),
            "na": na[keep],
            "in_cluster": (na > s.qrnca.t * top_value)[keep],
            "ig": None,
        }
    )
    top = sparse.groupby("query_id", sort=False).head(qrnca.TOP_ACTIVATIONS)[["query_id", "layer", "neuron", "na"]]
    top = top.rename(columns={"na": "activation"}).assign(activation=lambda d: d["activation"] * 3.0)
    results = pd.DataFrame(
        {
            "query_id": ids,
            "correct_prob": rng.uniform(0.2, 1.0, n_queries),
            "accuracy": rng.integers(0, 2, n_queries).astype(float),
            "seconds": 1.0,
        }
    )
    queries = [
        Query(
            id=qid,
            group=f"group{g}",
            question=f"synthetic question {qid}?",
            answer="yes",
            distractors=("no", "maybe", "unknown"),
        )
        for qid, g in zip(ids, group_of)
    ]
    with store.connect(path) as con:
        model_id = store.upsert_model(
            con,
            f"synthetic-{n_layers}x{n_neurons}",
            "synthetic",
            "none",
            n_layers,
            n_neurons,
            json.dumps({"n_layers": n_layers, "n_neurons": n_neurons}),
        )
        dataset_id = store.upsert_dataset(con, f"synthetic-{n_queries}", "bench_store", queries)
        run_id = store.get_or_create_run(con, RUN_NAME, model_id, dataset_id, s)
        store.write_rows(con, run_id, results, sparse, top)
        storing.finalize_run(con, run_id, seed=seed)
        for method in ("qrnca", "kn", "activation", "random"):
            rows = pd.DataFrame(
                {
                    "group_name": [f"group{g}" for g in range(groups)],
                    "metric": "pcr",
                    "value": rng.uniform(1, 10, groups),
                }
            )
            store.write_evaluations(con, run_id, method, "suppress", rows)
    return run_id


def bench_store(path: str | os.PathLike, repeats: int = 7, out: TextIO | None = sys.stdout) -> pd.DataFrame:
    """Median milliseconds of each explorer reader on the store's synthetic run (one warm-up, then `repeats` runs)."""
    with store.connect(path, read_only=True) as con:
        block_size = one_row(con, BLOCK_SIZE)[0]
        info = store.run_info(con, RUN_NAME)
        group = store.heatmap_groups(con, info.run_id)[0]
        query = store.qr_neurons(con, info.run_id, "qrnca")["query_id"].iloc[0]
        cases: dict[str, Callable[[], object]] = {
            "list_runs": lambda: store.list_runs(con),
            "heatmap (one group)": lambda: run_analyses.heatmap(con, info.run_id, group),
            "heatmap_groups": lambda: store.heatmap_groups(con, info.run_id),
            "overlap": lambda: run_analyses.overlap(con, info.run_id, "qrnca"),
            "layer_distribution": lambda: run_analyses.layer_distribution(con, info.run_id, "qrnca"),
            "common_neurons": lambda: run_analyses.common_neurons(con, info.run_id),
            "query_neurons": lambda: run_analyses.query_neurons(con, info.run_id, query),
            "qr_neurons (one query)": lambda: store.qr_neurons(con, info.run_id, "qrnca", query),
            "evaluations": lambda: store.evaluations(con, info.run_id),
        }
        rows = [(name, median_ms(fn, repeats)) for name, fn in cases.items()]
    rows.insert(
        0, ("connect read-only + close", median_ms(lambda: store.connect(path, read_only=True).close(), repeats))
    )
    rows.insert(0, ("checksum pass (first open)", median_ms(lambda: failing_block(Path(path), block_size), repeats)))
    table = pd.DataFrame(rows, columns=["reader", "ms"])
    if out is not None:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"), file=out)
    return table


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() in milliseconds over `repeats` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _synthetic_neurons(
    rng: np.random.Generator, group_of: np.ndarray, n_layers: int, n_neurons: int, rows_per_query: int, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat neuron indices and NA per query: a few common neurons, many of the query's group band, the rest uniform."""
    n_queries = len(group_of)
    n_group = rows_per_query * 2 // 5
    n_uniform = rows_per_query - COMMON_PER_QUERY - n_group
    total = n_layers * n_neurons
    common_pool = rng.choice(total, COMMON_POOL, replace=False)  # (pool,)
    band = max(1, n_layers // groups)
    band_start = (np.arange(groups) * band) % n_layers  # (groups,) first layer of each group's band
    group_pool = (
        band_start[:, None] + rng.integers(0, 2 * band, (groups, GROUP_POOL))
    ) % n_layers * n_neurons + rng.integers(0, n_neurons, (groups, GROUP_POOL))  # (groups, pool) flat indices
    common = common_pool[rng.integers(0, COMMON_POOL, (n_queries, COMMON_PER_QUERY))]  # (queries, c)
    own = group_pool[group_of[:, None], rng.integers(0, GROUP_POOL, (n_queries, n_group))]  # (queries, g)
    uniform = rng.integers(0, total, (n_queries, n_uniform))  # (queries, u)
    flat = np.concatenate([common, own, uniform], axis=1)  # (queries, rows)
    na = np.concatenate(
        [rng.uniform(0.3, 1.0, common.shape), rng.uniform(0.1, 1.0, own.shape), rng.uniform(0.06, 0.3, uniform.shape)],
        axis=1,
    ).astype(np.float32)  # (queries, rows)
    return flat, na


def _first_occurrence(flat: np.ndarray) -> np.ndarray:
    """Mask of each row's first occurrence of every value (later duplicates False)."""
    order = np.argsort(flat, axis=1, kind="stable")  # (queries, rows)
    ordered = np.take_along_axis(flat, order, axis=1)  # (queries, rows)
    first_sorted = np.ones_like(ordered, dtype=bool)  # (queries, rows)
    first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    mask = np.empty_like(first_sorted)  # (queries, rows)
    np.put_along_axis(mask, order, first_sorted, axis=1)
    return mask
