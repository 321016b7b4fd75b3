"""`qrn bench processes`: queries per minute of a data-parallel `qrn run` with 1 and with 2 processes."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time

from qrcore import store
from qrcore.errors import QRNError
from qrcore.runs.distributed import threads_per_process

BENCH_TIMES = """SELECT q.position, r.seconds FROM query_results r JOIN runs u ON u.run_id = r.run_id
    JOIN queries q ON q.dataset_id = u.dataset_id AND q.query_id = r.query_id"""


def bench_processes(model: str = "smollm2", n_queries: int = 8) -> dict:
    """Queries per minute of `qrn run` on this machine with 1 and with 2 processes, and their ratio.

    One process uses every core; each of 2 processes gets half of them (`launch`: on 2 cores, 1 thread each),
    since two processes that each use every core fight over them. The rate counts attribution time (the slowest
    process's summed query seconds); wall time adds start-up, model loading, merge and finalize.
    """
    row: dict = {"model": model, "queries": n_queries, "cores": len(os.sched_getaffinity(0))}
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "bench.duckdb")
            start = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "qrcore.cli",
                    "run",
                    "--model",
                    model,
                    "--dataset",
                    "domain",
                    "--groups",
                    "biology",
                    "--per-group",
                    str(n_queries),
                    "--db",
                    db,
                    "--shards",
                    tmp,
                    "--processes",
                    str(n),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(threads_per_process(n))},
            )
            if done.returncode:
                raise QRNError(f"qrn run with {n} processes failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
            row[f"wall_s_{n}"] = time.perf_counter() - start
            with store.connect(db, read_only=True) as con:
                times = con.execute(BENCH_TIMES).df()
        row[f"qpm_{n}"] = 60 * len(times) / float(times.groupby(times["position"] % n)["seconds"].sum().max())
    row["ratio"] = row["qpm_2"] / row["qpm_1"]
    print(f"model {model}, {n_queries} queries, {row['cores']} cores")
    for n in (1, 2):
        print(
            f"{n} process(es) x {threads_per_process(n)} thread(s): {row[f'qpm_{n}']:6.2f} queries/min "
            f"(wall {row[f'wall_s_{n}']:.0f} s)"
        )
    print(f"ratio 2 processes / 1: {row['ratio']:.2f}x")
    return row
