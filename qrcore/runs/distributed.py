"""Data-parallel `qrn run`: started by accelerate launch or torchrun (or `qrn run --processes N`), every process
attributes its share of the queries into Parquet shards (`qrcore.runs.shards`); the main process merges them into the
store in one transaction and finalizes the run.

Process r of N takes the queries at positions r, r + N, r + 2N, ... of the run's dataset, so the split is the
same on a rerun, which skips queries already in shards or in the store. Only the main process opens the store
(holding its writer lock for the whole run) and broadcasts the run to the others, so other nodes need the shard
folder (shared) but not the store. The processes only broadcast once and meet at one barrier, over gloo, which
works on CPUs and GPUs alike.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta
import os
from pathlib import Path
import subprocess
import sys

from qrcore import store
from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress
from qrcore.runs import shards
from qrcore.runs.batch import check_prompts, plan_queries, run_name
from qrcore.settings import RunSettings

WORLD_ENV = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]
"""Where launchers (torchrun, mpirun) put the number of processes; accelerate reads the same."""
BARRIER_TIMEOUT = timedelta(days=7)
"""How long finished processes wait at the barrier for the slowest one (runs of a big model take days)."""


def world_size() -> int:
    """Number of processes a launcher started this one with; 1 when run directly."""
    return next((int(os.environ[v]) for v in WORLD_ENV if os.environ.get(v)), 1)


def start_process(device: str | None) -> tuple[str, bool]:
    """Join the launcher's process group; (device to load this process's model on, whether it is the main process).

    device None: accelerate's device of the process (cuda:<local rank>, or cpu without CUDA); 'auto' spreads the
    model over every GPU the process sees (start one process per node); cpu or cuda:N as given.
    """
    from accelerate import PartialState
    import torch

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available(), backend="gloo", timeout=BARRIER_TIMEOUT)
    return (str(state.device) if device is None else device), state.is_main_process


def run_distributed(
    lm: LoadedModel,
    dataset: str,
    db: str | None = None,
    name: str | None = None,
    settings: RunSettings = RunSettings(),
    groups: list[str] | None = None,
    per_group: int | None = None,
    root: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> str:
    """`run_dataset` for each process of a launch: its share of the queries into shards, then merge; the run id.

    Shards go to <root>/<run id>/ (root default <cache>/runs); the main process merges them and finalizes the run.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    root = Path(root) if root else shards.default_root()
    with ExitStack() as stack:
        setup: list = [None] * 4  # manifest, query ids done, cache hit, error
        if state.is_main_process:
            try:
                stack.enter_context(store.writer_lock(db))
                setup[:3] = _open_run(lm, dataset, db, name, settings, groups, per_group, root)
            except QRNError as err:
                setup[3] = err
        manifest, skip, hit, error = broadcast_object_list(setup)
        if error:  # the main process reports it; the others stop quietly
            raise error if state.is_main_process else SystemExit(2)
        if hit:
            return manifest["run_id"]
        folder = root / manifest["run_id"]
        queries = shards.queries_of(manifest)
        mine = [q for i, q in enumerate(queries) if i % state.num_processes == state.process_index and q.id not in skip]

        def show(what: str) -> None:
            """The whole run's finished queries (all processes' shards), not this process's count."""
            if progress and state.is_main_process:
                progress(len(skip | shards.finished_shards(folder).keys()), len(queries), what)

        key = {**shards.key_of(manifest), "model": lm.fingerprint}
        compute_shards(lm, folder, state.process_index, key, mine, settings, lambda _i, _n, query_id: show(query_id))
        state.wait_for_everyone()
        if state.is_main_process:
            show("merge")
            with store.connect(db) as con:
                shards.merge_into(con, folder)
    return manifest["run_id"]


def compute_shards(
    lm: LoadedModel,
    folder: Path,
    rank: int,
    key: dict,
    queries: list[Query],
    settings: RunSettings,
    progress: Progress | None = None,
) -> None:
    """The shard worker: attribute each query and write it as a shard of `rank`, one file per finished query."""
    from qrcore.attribution.ig import NeuronAttribution

    attr = NeuronAttribution(lm, settings.attribution, settings.prompt, stems_for=queries)
    for i, q in enumerate(queries):
        shards.write_shard(folder, rank, key, attr.attribute(q), settings.qrnca)
        if progress:
            progress(i + 1, len(queries), q.id)


def _open_run(
    lm: LoadedModel,
    dataset: str,
    db: str | None,
    name: str | None,
    settings: RunSettings,
    groups: list[str] | None,
    per_group: int | None,
    root: Path,
) -> tuple[dict, set[str], bool]:
    """Main process: store the run's model, dataset and run and write its manifest; (manifest, ids done, cache hit)."""
    ds_name, source, queries = plan_queries(dataset, db, settings, groups, per_group)
    check_prompts(lm, queries, settings)
    manifest = shards.make_manifest(lm, run_name(name, ds_name, lm), ds_name, source, queries, settings)
    with store.connect(db) as con:
        manifest = shards.open_run(con, manifest)
        stored = store.done_query_ids(con, manifest["run_id"])
        if stored >= {q.id for q in queries} and store.run_info(con, manifest["run_id"]).status == "finished":
            return manifest, stored, True  # cache hit: no model forward
    folder = root / manifest["run_id"]
    shards.write_manifest(folder, manifest)
    return manifest, stored | shards.finished_shards(folder).keys(), False


def threads_per_process(processes: int) -> int:
    """torch threads for each of `processes` processes on this machine: its cores split evenly, at least 1."""
    return max(1, len(os.sched_getaffinity(0)) // processes)


def launch(argv: list[str], processes: int, device: str | None = None) -> int:
    """Run `qrn <argv>` in `processes` processes on this machine through accelerate's launcher; its exit code.

    `accelerate launch --cpu` starts a single process unless mpirun is set up, so --multi_gpu (torchrun) is used
    on CPUs too (the processes then join over gloo). Each process gets OMP_NUM_THREADS = cores // processes
    (unless set): processes that each use every core fight over them.
    """
    import torch

    gpus = torch.cuda.device_count()
    if device is None and gpus and processes > gpus:
        raise QRNError(
            f"--processes {processes} needs a GPU each and this machine has {gpus}; use fewer processes or --device cpu"
        )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "qrcore.cli",
        *argv,
    ]
    threads = os.environ.get("OMP_NUM_THREADS") or str(threads_per_process(processes))
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": threads})
