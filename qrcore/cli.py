"""The `qrn` command line: one subcommand per job; bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
import json
from pathlib import Path
import sys
from typing import TYPE_CHECKING, Callable, NoReturn, cast

from qrcore.errors import QRNError
from qrcore.progress import Progress

if TYPE_CHECKING:
    from qrcore.editing.evidence import Scorecard
    from qrcore.evaluation.lab import ControlledEdit, LabRun
    from qrcore.evaluation.report import Report
    from qrcore.model.spec import LoadedModel


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are QRNErrors: one line `qrn: error: ...` and exit code 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        """Raise the parse error as a QRNError that points to the command's help."""
        raise QRNError(f"{message}; see `{self.prog} --help`")


@contextmanager
def _bar(desc: str, unit: str, disable: bool = False) -> Iterator[Progress]:
    """A Progress that shows a tqdm bar from its first report on, so a command refused before any work prints only its
    error line."""
    from tqdm import tqdm

    bars = []

    def progress(done: int, total: int, label: str) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, unit=unit, disable=disable))
        bars[0].total, bars[0].n = total, done
        bars[0].set_postfix_str(label)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _model_name_arg(p: argparse.ArgumentParser) -> None:
    """--model: an embedded model's name, a GGUF file, a model folder or a hub id."""
    p.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (the default), gemma3-270m or qwen2.5-coder-1.5b "
        "(embedded), a .gguf file, a model folder or a hub id",
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    """--model, --dtype, --device: shared by every command that loads a model in this process."""
    _model_name_arg(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (device_map over all GPUs)")


def _at_least_one(args: argparse.Namespace, *names: str) -> None:
    """QRNError naming the first of the --NAME arguments that is below 1 (one that was not given is None)."""
    for name in names:
        value = getattr(args, name.replace("-", "_"))
        if value is not None and value < 1:
            raise QRNError(f"--{name} is {value}; it must be at least 1.")


def _load(args: argparse.Namespace):
    """The model named by the --model/--dtype/--device arguments."""
    from qrcore.model.load import load_model
    from qrcore.model.spec import ModelSpec

    return load_model(ModelSpec(args.model, args.dtype, args.device))


def cmd_attribute(args: argparse.Namespace) -> None:
    """NA of one custom question: answer probabilities and the top neurons."""
    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.data.prompts import check_templates
    from qrcore.data.queries import make_query
    from qrcore.editing.scaling import correct_probs, letter_probs
    from qrcore.selection.qrnca import query_na
    from qrcore.selection.topk import top_neurons

    query = make_query(args.question, args.option, args.answer)
    _at_least_one(args, "top")
    settings = _settings(args)
    check_templates(settings.prompt)
    lm = _load(args)
    attr = NeuronAttribution(lm, settings.attribution, settings.prompt)
    prompts = attr.prompts(query)
    with _bar("attribution", "pass", disable=args.json) as progress:
        result = attr.attribute(query, progress)
    probs = letter_probs(lm, prompts)  # (templates, options): the table and the mean below are both read from it
    mean = float(correct_probs(probs, prompts).mean().round(6))
    top = top_neurons(query_na(result.ig, settings.qrnca).na, args.top)
    if args.json:
        print(
            json.dumps(
                {
                    "options": list(prompts[0].options),
                    "letters": list(prompts[0].letters),
                    "probs": probs[0].round(6).tolist(),
                    "correct": prompts[0].correct,
                    "correct_prob_mean": mean,
                    "seconds": round(result.seconds, 3),
                    "top_neurons": [{"layer": l, "neuron": n, "score": round(s, 6)} for l, n, s in top],
                }
            )
        )
        return
    print("Answer probabilities (template 1, options as shown to the model):")
    for i, (letter, text, p) in enumerate(zip(prompts[0].letters, prompts[0].options, probs[0])):
        mark = "  <- correct" if i == prompts[0].correct else ""
        print(f"  {letter}. {text:<30} {p:.4f}{mark}")
    print(f"Mean correct-letter probability over {len(prompts)} templates: {mean:.4f} ({result.seconds:.1f} s)")
    print(f"Top {len(top)} neurons by NA (layer, neuron, score):")
    for l, n, s in top:
        print(f"  ({l:>2}, {n:>5}, {s:+.4f})")


def cmd_bench_attribution(args: argparse.Namespace) -> None:
    """Fast path, preview and oracle on the same queries: seconds and FLOPs per query, share of the matmul peak."""
    from qrbench.attribution import bench_attribution

    _at_least_one(args, "queries", "steps")
    bench_attribution(_load(args), n_queries=args.queries, oracle_prompts=args.oracle_prompts, steps=args.steps)


def cmd_bench_precision(args: argparse.Namespace) -> None:
    """Exact vs mixed precision on built-in queries: seconds per query, speed-up, Jaccard of clusters and QR neurons."""
    from qrbench.attribution import bench_precision

    _at_least_one(args, "per-group", "steps")
    bench_precision(_load(args), per_group=args.per_group, steps=args.steps, save=args.save)


def cmd_bench_top_down(args: argparse.Namespace) -> None:
    """The first top-down block's time against the full attribution's, and how much of the top 20 it already has."""
    from qrbench.attribution import bench_top_down

    _at_least_one(args, "queries", "block")
    bench_top_down(_load(args), n_queries=args.queries, block=args.block)


def cmd_bench_quadrature(args: argparse.Namespace) -> None:
    """Integration rules of Eq. 5 against a 32-node reference and the authors' rule, and the query lab's live rule."""
    from qrbench.quadrature import bench_quadrature

    _at_least_one(args, "per-group")
    bench_quadrature(_load(args), args.db, args.run, per_group=args.per_group, save=args.save)


def cmd_bench_evaluation(args: argparse.Namespace) -> None:
    """The evaluation's edits of a query one forward per edit against all packed in one forward: seconds and ratio."""
    from qrbench.evaluation import bench_evaluation

    _at_least_one(args, "queries")
    bench_evaluation(_load(args), n_queries=args.queries)


def _settings(args: argparse.Namespace):
    """RunSettings from the `_run_args` arguments; the settings dataclasses check the values (QRNError). With
    --live-rule (qrn run) the attribution is the model's live rule, so the run's settings and key record it."""
    from qrcore.attribution.live_rule import live_rule
    from qrcore.settings import AttributionSettings, PromptSettings, QRNCASettings, RunSettings

    attribution = AttributionSettings(args.steps, args.riemann)
    if getattr(args, "live_rule", False):
        if attribution != AttributionSettings():
            raise QRNError(
                "--live-rule sets the rule and its points from the model's measurement; leave out --riemann and --steps."
            )
        rule = live_rule(args.model)
        attribution = rule.settings
        print(f"live rule of {args.model}: {rule.why}")
    return RunSettings(
        PromptSettings(args.templates, args.seed),
        attribution,
        QRNCASettings(t=args.t, u=args.u, v=args.v, cluster=args.cluster, z=args.z),
    )


def cmd_run(args: argparse.Namespace) -> None:
    """Batch-attribute a dataset into the store (resumable), then compute QRNCA for the run.

    Under accelerate launch or torchrun every process takes its share of the queries (`qrcore.runs.distributed`);
    --processes N starts N such processes on this machine; one process given --shards writes shards as they do.
    """
    from qrcore import store
    from qrcore.names import check_name
    from qrcore.outputs import check_folder
    from qrcore.runs import distributed
    from qrcore.runs.batch import plan_queries, run_dataset

    if args.name is not None:
        check_name(args.name, "run name")
    if args.shards:
        check_folder(args.shards, "--shards")
    settings = _settings(args)
    _at_least_one(args, "per-group")
    groups = args.groups.split(",") if args.groups else None
    launched = distributed.world_size() > 1
    if args.processes < 1 or (launched and args.processes > 1):
        raise QRNError(
            "--processes must be at least 1, and is left out under accelerate launch or torchrun "
            "(they start the processes)."
        )
    if not launched:
        plan_queries(args.dataset, args.db, settings, groups, args.per_group)  # bad input fails before the model loads
    if args.processes > 1:
        given = {
            k.replace("_", "-"): v
            for k, v in vars(args).items()
            if k not in ("command", "func", "processes") and v not in (None, False)
        }
        forward = [f"--{k}" if v is True else f"--{k}={v}" for k, v in given.items()]
        if code := distributed.launch(["run", *forward], args.processes, args.device):
            raise SystemExit(code)
        return
    args.device, main = distributed.start_process(args.device) if launched else (args.device or "cpu", True)
    lm = _load(args)
    with _bar(f"qrn run {args.dataset}", "query", disable=not main) as progress:
        if launched or args.shards:  # one process with --shards: the run's progress as files that can be carried
            run_id = distributed.run_distributed(
                lm, args.dataset, args.db, args.name, settings, groups, args.per_group, args.shards, progress
            )
        else:
            run_id = run_dataset(lm, args.dataset, args.db, args.name, settings, groups, args.per_group, progress)
    if main:
        print(f"run {run_id} finished in store {args.db or store.default_db()}")


def cmd_import(args: argparse.Namespace) -> None:
    """Validate a dataset file and store it under a name, or load the runs of a `qrn export` folder."""

    from qrcore import store
    from qrcore.data.datasets import dataset_stats, import_file

    if Path(args.file).is_dir():
        _import_runs(args)
        return
    queries = import_file(args.file, args.name)
    name = args.name or Path(args.file).stem
    with store.writer_lock(args.db, "qrn import"), store.connect(args.db) as con:
        store.upsert_dataset(con, name, str(args.file), queries)
    print(f"imported {len(queries)} queries as dataset {name!r}")
    print(dataset_stats(queries).to_string(index=False))


def _import_runs(args: argparse.Namespace) -> None:
    """`qrn import FOLDER`: load the runs of an export folder that the store lacks and name the folder's runs."""
    from qrcore import store

    if args.name:
        raise QRNError("--name names the dataset of a dataset file; a folder of runs keeps its own names: drop --name")
    ids = store.exported_run_ids(args.file)
    with store.writer_lock(args.db, "qrn import"), store.connect(args.db) as con:
        loaded = store.import_runs(con, args.file)
        runs = store.list_runs(con)
    names = ", ".join(runs[runs["run_id"].isin(ids)]["name"])
    if loaded:
        print(f"loaded {args.file}: the store now holds its runs {names}")
    else:
        print(f"the store already holds every run of {args.file}: {names}")


def cmd_data_stats(args: argparse.Namespace) -> None:
    """Accuracy of the model on a dataset, per group (mean over templates)."""
    from qrcore.evaluation.accuracy import dataset_accuracy
    from qrcore.evaluation.report import markdown
    from qrcore.runs.batch import resolve_dataset

    _, _, queries = resolve_dataset(args.dataset, args.db)
    table = dataset_accuracy(_load(args), queries, args.seed)
    print(markdown(table, ".3f") if args.markdown else table.to_string(index=False))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Tables 4, 6 and 7 for a finished run; stored in the run's evaluations."""
    from qrcore import store
    from qrcore.evaluation.evaluate import evaluate_run, plan_evaluation
    from qrcore.evaluation.report import write_report

    _at_least_one(args, "per-group")
    if args.if_missing:
        with store.connect(args.db, read_only=True) as con:
            if not store.evaluations(con, args.run).empty:
                print(f"run {args.run!r} already has evaluations; nothing to do")
                return
    info = plan_evaluation(args.run, args.db, args.per_group)[0]  # a run that cannot be evaluated fails before loading
    lm = _load(args)
    store.require_model(info, lm.spec.name, lm.fingerprint)
    with _bar("evaluate", "query") as progress:
        evaluate_run(lm, args.run, args.db, args.per_group, args.seed, progress)
    _print_report(write_report(args.run, args.db, args.out))


def cmd_activations(args: argparse.Namespace) -> None:
    """Every neuron's top queries of a run (its highest activations at the answer position), stored; resumable."""
    from qrcore.runs.activations import plan_activations, store_activations

    _at_least_one(args, "every")
    plan = plan_activations(args.run, args.db)  # an unknown run fails before the model loads
    if not plan.todo:
        print(f"run {plan.info.name!r} has the top queries of all its {len(plan.done)} queries; nothing to do")
        return
    args.model = args.model or plan.info.model_name
    lm = _load(args)
    with _bar(f"qrn activations {plan.info.name}", "query") as progress:
        store_activations(lm, args.run, args.db, progress, args.every)
    print(f"run {plan.info.name!r}: top queries of every neuron over {len(plan.done) + len(plan.todo)} queries stored")


def cmd_stability(args: argparse.Namespace) -> None:
    """A run's perturbed runs (another seed, a 32-node integral) on a sample, then its stability table."""
    from qrcore import store
    from qrcore.runs.stability import perturb, stability_table

    _at_least_one(args, "per-group")
    with store.connect(args.db, read_only=True) as con:
        info = store.complete_run(con, args.run)  # an unknown or unfinished run fails before the model loads
    lm = _load(args)
    store.require_model(info, lm.spec.name, lm.fingerprint)
    with _bar("perturbed runs", "query") as progress:
        perturb(lm, args.run, args.db, args.per_group, progress)
    with store.connect(args.db, read_only=True) as con:
        table = stability_table(con, store.run_info(con, args.run))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


def cmd_lab(args: argparse.Namespace) -> None:
    """Evidence that an edit is real: a query's or group's neurons edited beside matched random controls."""
    from qrcore.evaluation import lab

    _at_least_one(args, "controls", "top")
    if args.query is None and (args.sweep or args.per_neuron):
        raise QRNError("--sweep and --per-neuron edit one query's neurons; pass --query instead of --group")
    if args.out is not None and not args.every_group:
        raise QRNError("--out writes the table of --every-group; pass --every-group or leave --out out")
    info = lab.read_lab(args.run, args.db)  # an unknown or unfinished run, query, group or method fails before loading
    info.check_method(args.method)
    if args.query is not None:
        info.query(args.query)
    elif args.group is not None:
        info.group(args.group)
    edit = lab.ControlledEdit(args.multiplier, args.controls, args.seed)
    out = _csv_out(args.out) if args.out else None
    lm = _load(args)
    if args.every_group:
        _print_group_matrix(lm, info, args.method, edit, out)
        return
    if args.sweep:
        dose = lab.query_sweep(lm, info, cast(str, args.query))  # --sweep without --query was refused above
        print(f"dose-response of query {args.query}: P(correct) (renormalised over the options) per multiplier")
        print(
            dose.table()
            .pivot(index="multiplier", columns="set", values="p_correct")
            .to_string(float_format="{:.4f}".format)
        )
        print("\nwhere the answer flips (mean margin P(correct) - best other option crosses 0; NaN: not in the sweep)")
        print(dose.flips().to_string(index=False, float_format="{:.3f}".format))
        return
    if args.per_neuron:
        query = cast(str, args.query)  # --per-neuron without --query was refused above
        effects = lab.query_neuron_effects(lm, info, query, args.method, args.multiplier)
        print(
            f"each {args.method} neuron of query {args.query} alone x {args.multiplier:g}: P(correct) "
            f"{effects.p_before:.4f} unedited, {effects.p_all:.4f} with all {len(effects.neurons)} together"
        )
        print(
            effects.table().to_string(index=False, formatters={"p_alone": "{:.4f}".format, "change": "{:+.4f}".format})
        )
        return
    with _bar("lab", "row") as progress:
        if args.query is not None:
            card = lab.query_scorecard(
                lm,
                info,
                args.query,
                args.method,
                edit,
                args.locality,
                args.paraphrase,
                args.top,
                args.fluency,
                progress,
            )
        else:
            group = cast(str, args.group)  # argparse requires --query or --group
            card = lab.group_scorecard(lm, info, group, method=args.method, edit=edit, progress=progress)
    _print_scorecard(card)


def _csv_out(out: str) -> Path:
    """--out: a .csv file in a folder that exists (checked before the model loads)."""
    path = Path(out)
    if path.suffix != ".csv" or not path.parent.is_dir():
        raise QRNError(f"--out {out} must be a .csv file in a folder that exists; make the folder or pick another path")
    return path


def _print_group_matrix(lm: LoadedModel, info: LabRun, method: str, edit: ControlledEdit, out: Path | None) -> None:
    """Each group's neurons edited in turn: every group's change (and `out` as CSV), then the diagonal beside the
    other groups' mean."""
    from qrcore.atomic import files_into
    from qrcore.evaluation import group_edits

    with _bar("group edits", "group") as progress:
        matrix = group_edits.group_edit_matrix(lm, info, method=method, edit=edit, progress=progress)
    print(
        f"{info.info.name}: each group's {method} neurons x {edit.multiplier:g}, P(correct) change on every group's "
        f"held-out queries (rows: edited; columns: measured); control: {edit.controls} matched random draws"
    )
    print(matrix.pivot(index="edited", columns="measured", values="change").to_string(float_format="{:+.4f}".format))
    print("\nthe edited group's own change beside its controls' 95% interval, and the other groups' mean change")
    print(group_edits.diagonal(matrix).to_string(float_format="{:+.4f}".format))
    if out is not None:
        with files_into(out.parent) as tmp:
            matrix.to_csv(tmp / out.name, index=False)
        print(f"wrote {out}")


def _print_scorecard(card: Scorecard) -> None:
    """A scorecard's table and a legend of what each column and measure means."""
    from qrcore.editing.evidence import MEASURES

    print(
        f"scorecard: {card.edited}, {len(card.neurons)} neurons x {card.multiplier:g}; control: {card.controls} draws "
        f"of random neurons with the same layers and count per layer (seed {card.seed})"
    )
    print(card.table().to_string(index=False, float_format="{:.4f}".format))
    print(
        "P: the correct letter's probability renormalised over the options (mean over prompts); change: P after - "
        "P before; control_low/high: the controls' 95% interval of the change; p_value: one-sided permutation "
        "p = (1 + controls at least as extreme) / (1 + controls); acc: share of prompts answered right"
    )
    for m in card.measures:
        print(f"{m.name}: {MEASURES.get(m.name, 'its held-out queries, which did not build the edited set')}")
    if card.fluency:
        f = card.fluency
        print(f"fluency (n-gram entropy {f.entropy_before:.3f} -> {f.entropy_after:.3f}):")
        print(f"  before: {f.before}\n  after:  {f.after}")


def cmd_report(args: argparse.Namespace) -> None:
    """Write a run's tables (accuracy, QR neurons, PCR, flip rates, prediction; with --vocab Table 5, from the run's
    model), or several runs' side by side."""
    from qrcore import store
    from qrcore.evaluation.report import write_comparison, write_report

    if len(args.run) > 1:
        if args.vocab:
            raise QRNError("--vocab is for one run's report; name one --run")
        _print_report(write_comparison(args.run, args.db, args.out))
        return
    lm = None
    if args.vocab:
        with store.connect(args.db, read_only=True) as con:
            store.complete_run(con, args.run[0])  # an unknown run fails before the model loads
        lm = _load(args)  # another model than the run's is refused before anything is written (vocabulary_tables)
    _print_report(write_report(args.run[0], args.db, args.out, lm))


def _print_report(report: Report) -> None:
    """The files a report wrote, one a line, and its note on what is missing."""
    for path in report.paths:
        print(path)
    if report.missing:
        print(f"qrn: note: {report.missing}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    """Write runs as Parquet (e.g. the shipped default runs)."""
    from qrcore import store

    with store.connect(args.db, read_only=True) as con:
        counts = store.export_runs(con, args.run, args.out)
    print(", ".join(f"{t}: {n}" for t, n in counts.items()))


def cmd_bench_store(args: argparse.Namespace) -> None:
    """Reader latency on a synthetic 10,000-query store of a 32 x 11008 model."""
    import tempfile

    from qrbench.store import bench_store, build_synthetic_store

    _at_least_one(args, "queries")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.duckdb"
        build_synthetic_store(path, n_queries=args.queries)
        bench_store(path)


def cmd_merge(args: argparse.Namespace) -> None:
    """Merge a run folder of Parquet shards (e.g. copied from a cluster) into the store, then finalize."""
    from qrcore.runs.shards import merge_shards

    run_id, n = merge_shards(args.folder, args.db)
    print(f"merged {n} queries into run {run_id}")


def cmd_bench_processes(args: argparse.Namespace) -> None:
    """Queries per minute with 1 and 2 processes on this machine."""
    from qrbench.processes import bench_processes

    _at_least_one(args, "queries")
    bench_processes(args.model, args.queries)


def cmd_bench_explorer(args: argparse.Namespace) -> None:
    """Slider latency on the model and heatmap page time on a 32 x 11008 store."""
    from explorer.bench import bench_explorer

    bench_explorer(args.db)


def cmd_bench_features(args: argparse.Namespace) -> None:
    """Neuron card, threshold change and custom-question scoring times on the shipped runs and a synthetic one."""
    from qrbench.features import bench_features

    bench_features()


MAX_PORT = 65535
"""The highest TCP port."""


def cmd_explore(args: argparse.Namespace) -> None:
    """Start the Streamlit explorer on localhost, from the source tree or the installed package alike."""
    import os
    import subprocess
    import tomllib

    import explorer

    if not 1 <= args.port <= MAX_PORT:
        raise QRNError(f"--port is {args.port}; pass a port from 1 to {MAX_PORT} (default 8501).")
    folder = Path(explorer.__file__).resolve().parent
    config = tomllib.loads((folder / "config.toml").read_text())
    flags = [
        f"--{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
        for section, values in config.items()
        for key, value in values.items()
        if key != "port"
    ]
    chosen = {"QRN_MODEL": args.model} if args.model else {}  # else $QRN_MODEL, or the app's own start model
    env = {**os.environ, **chosen, **({"QRN_DB": args.db} if args.db else {})}
    raise SystemExit(
        subprocess.call(
            [sys.executable, "-m", "streamlit", "run", str(folder / "app.py"), *flags, "--server.port", str(args.port)],
            env=env,
            cwd=folder.parent,
        )
    )


def _run_args(p: argparse.ArgumentParser) -> None:
    """Settings of a run: prompts, attribution, QRNCA (all part of the cache key); defaults from qrcore.settings."""
    from qrcore.settings import CLUSTERS, NORMALISERS, RIEMANN, AttributionSettings, PromptSettings, QRNCASettings

    a, q = AttributionSettings(), QRNCASettings()
    p.add_argument("--templates", type=int, default=PromptSettings().templates)
    _seed_arg(p)
    _steps_arg(p)
    p.add_argument(
        "--riemann",
        choices=RIEMANN,
        default=a.riemann,
        help="quadrature of Eq. 5: linspace(0, 1, m) as in the authors' code, k/m (k = 1..m) as in the text, "
        "or m Gauss-Legendre nodes",
    )
    p.add_argument("--t", type=float, default=q.t, help="coarse cluster threshold (Sec. 4.3)")
    p.add_argument(
        "--cluster",
        choices=CLUSTERS,
        default=q.cluster,
        help="threshold each template and unite (the authors' code) or threshold the templates' sum",
    )
    p.add_argument("--z", choices=NORMALISERS, default=q.z, help="Z of Eq. 5 (see the README)")
    p.add_argument("--u", type=float, default=q.u, help="common-neuron threshold (Sec. 4.4)")
    p.add_argument("--v", type=int, default=q.v, help="top-v before removing common neurons (Sec. 4.5)")


def _steps_arg(p: argparse.ArgumentParser) -> None:
    """--steps: the Riemann steps m of Eq. 5."""
    from qrcore.settings import AttributionSettings

    p.add_argument("--steps", type=int, default=AttributionSettings().steps, help="points m of the integral of Eq. 5")


def _seed_arg(p: argparse.ArgumentParser) -> None:
    """--seed: option shuffling and sampling."""
    p.add_argument("--seed", type=int, default=0, help="option shuffling and sampling seed")


def _per_group_arg(p: argparse.ArgumentParser, what: str, default: int | None = None) -> None:
    """--per-group: at most this many queries of each group take part in `what`."""
    p.add_argument(
        "--per-group",
        type=int,
        default=default,
        help=f"{what}: at most this many queries of each group (default {default or 'all'})",
    )


def _out_arg(p: argparse.ArgumentParser) -> None:
    """--out: the folder that reports are written into."""
    p.add_argument("--out", default="cache/reports", help="folder of the report files (default cache/reports)")


def _db_arg(p: argparse.ArgumentParser) -> None:
    """--db: the DuckDB store."""
    p.add_argument("--db", default=None, help="DuckDB store (default $QRN_DB or cache/qrn.duckdb)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = Parser(prog="qrn", description="Query-relevant neurons of LLMs (QRNCA).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("attribute", help="attribute one multiple-choice question")
    p.add_argument("--question", required=True)
    p.add_argument("--option", action="append", default=[], help="an answer option (repeat for each)")
    p.add_argument("--answer", required=True, help="the correct option, as written in --option")
    p.add_argument("--top", type=int, default=20)
    _run_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _model_args(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("run", help="attribute a dataset into the store and compute QRNCA (resumable)")
    p.add_argument("--dataset", required=True, help="domain, language, a .json/.csv file or an imported dataset")
    p.add_argument("--groups", help="comma-separated groups to run (default all)")
    _per_group_arg(p, "queries run")
    p.add_argument("--name", help="run name (default DATASET@MODEL)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="data-parallel processes on this machine, started through accelerate (default 1)",
    )
    p.add_argument(
        "--shards",
        help="folder of the run folders of data-parallel runs (default $QRN_CACHE/runs, "
        "cache/runs); shared by all nodes of a cluster run. Given to one process, it writes a shard per "
        "finished query too: copy the folder to another machine and the same command resumes the run there",
    )
    _run_args(p)
    p.add_argument(
        "--live-rule",
        action="store_true",
        help="integrate Eq. 5 with the model's live rule (qrcore/data/live_rules.json: the cheapest rule measured to "
        "keep the authors' QR neurons; the authors' rule where none does) instead of --riemann/--steps",
    )
    _model_args(p)
    _db_arg(p)
    p.set_defaults(func=cmd_run, device=None)  # None: cpu, or each launched process's own accelerate device

    p = sub.add_parser(
        "import", help="store a dataset file (paper JSON or MMLU-style CSV), or load the runs of a qrn export folder"
    )
    p.add_argument("file", help="a dataset file, or a folder that qrn export wrote")
    p.add_argument("--name", help="dataset name (default: file stem; not for a folder of runs)")
    _db_arg(p)
    p.set_defaults(func=cmd_import)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="what", required=True)
    p = data.add_parser("stats", help="the model's accuracy per group")
    p.add_argument("--dataset", default="domain")
    _seed_arg(p)
    p.add_argument("--markdown", action="store_true")
    _model_args(p)
    _db_arg(p)
    p.set_defaults(func=cmd_data_stats)

    p = sub.add_parser("evaluate", help="PCR, flip rates and neuron-based prediction of a finished run")
    p.add_argument("--run", required=True)
    _per_group_arg(p, "queries edited")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the run already has evaluations")
    _seed_arg(p)
    _out_arg(p)
    _model_args(p)
    _db_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("activations", help="each neuron's queries of the highest activation, stored (resumable)")
    p.add_argument("--run", required=True)
    p.add_argument("--every", type=int, default=16, help="queries between two writes of the rows (default 16)")
    _model_args(p)
    p.set_defaults(model=None, func=cmd_activations)
    _db_arg(p)

    p = sub.add_parser(
        "stability", help="compute a run's perturbed runs on a sample and print how stable its QR neurons are"
    )
    p.add_argument("--run", required=True)
    _per_group_arg(p, "queries perturbed", default=5)
    _model_args(p)
    _db_arg(p)
    p.set_defaults(func=cmd_stability)

    p = sub.add_parser("lab", help="evidence that an edit is real: an edit's effect beside matched random controls")
    p.add_argument("--run", required=True)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--query", help="a query of the run: its QR neurons edited (reliability, generalization, locality)"
    )
    target.add_argument(
        "--every-group",
        action="store_true",
        help="each group of the run edited in turn: the matrix of changes per edited and measured group",
    )
    target.add_argument(
        "--group", help="a group of the run: its queries' QR neurons edited, accuracy per group held out"
    )
    p.add_argument(
        "--method",
        default="qrnca",
        help="whose neurons: qrnca (default) or a baseline (random, activation, kn, qrnca_no_ica, qrnca_with_common)",
    )
    p.add_argument("--multiplier", type=float, default=0.0, help="of the neurons' activation: 0 suppresses, 2 boosts")
    p.add_argument("--controls", type=int, default=100, help="matched random control draws (default 100)")
    p.add_argument("--locality", type=int, default=10, help="queries sampled of the same group and of others")
    p.add_argument("--paraphrase", action="append", default=[], help="the query's question asked otherwise (repeat)")
    p.add_argument("--top", type=int, help="edit only the query's best TOP neurons")
    p.add_argument("--fluency", action="store_true", help="generate a free-form answer before and after (slow)")
    p.add_argument("--sweep", action="store_true", help="dose-response of every method's neurons instead")
    p.add_argument("--per-neuron", action="store_true", help="each neuron edited alone instead")
    p.add_argument("--out", help="with --every-group: the matrix also written to this .csv file")
    _seed_arg(p)
    _model_args(p)
    _db_arg(p)
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("report", help="write a run's tables (or runs' side by side) as Markdown and CSV")
    p.add_argument(
        "--run", required=True, action="append", help="a run; given twice or more, the runs side by side (one dataset)"
    )
    p.add_argument(
        "--vocab",
        action="store_true",
        help="also Table 5: the top vocabulary tokens of the common neurons and of each group's most shared QR "
        "neurons (loads the run's model: give its --model)",
    )
    _model_args(p)
    _out_arg(p)
    _db_arg(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="write runs as Parquet (remakes the shipped default runs)")
    p.add_argument("--run", action="append", required=True)
    p.add_argument("--out", required=True)
    _db_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explore", help="open the explorer on localhost")
    p.add_argument("--model", help="the model it opens on (default: $QRN_MODEL, else qwen2.5-coder-1.5b)")
    p.add_argument("--port", type=int, default=8501)
    _db_arg(p)
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("merge", help="merge a run folder of shards into the store")
    p.add_argument("folder")
    _db_arg(p)
    p.set_defaults(func=cmd_merge)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="what", required=True)
    p = bench.add_parser("attribution", help="fast path vs oracle, seconds per query")
    p.add_argument("--queries", type=int, default=2, help="queries timed with the fast path")
    p.add_argument("--oracle-prompts", type=int, default=1, help="prompts timed with the (slow) oracle; 0: none")
    _steps_arg(p)
    _model_args(p)
    p.set_defaults(func=cmd_bench_attribution)
    p = bench.add_parser(
        "precision", help="exact vs mixed precision: speed-up and agreement of clusters and QR neurons"
    )
    _per_group_arg(p, "built-in domain queries (6 groups)", default=5)
    _steps_arg(p)
    p.add_argument(
        "--save", action="store_true", help="record the agreement as the model's, for the query lab's bfloat16 choice"
    )
    _model_args(p)
    p.set_defaults(func=cmd_bench_precision)
    p = bench.add_parser(
        "quadrature", help="integration rules: error against a 32-node reference, agreement with the authors' rule"
    )
    _per_group_arg(p, "queries of the run", default=10)
    p.add_argument("--run", help="a finished run of the model (default: its run of the built-in domain set)")
    p.add_argument(
        "--save", action="store_true", help="record the live rule it finds as the model's, for the query lab"
    )
    _model_args(p)
    _db_arg(p)
    p.set_defaults(func=cmd_bench_quadrature)
    p = bench.add_parser("top-down", help="results as they come: the first layer block's time against the full result")
    p.add_argument("--queries", type=int, default=2, help="built-in domain queries")
    p.add_argument("--block", type=int, help="layers per block, from the top (default the query lab's: a seventh)")
    _model_args(p)
    p.set_defaults(func=cmd_bench_top_down)
    p = bench.add_parser("evaluation", help="the evaluation's edits one forward each vs packed, seconds per query")
    p.add_argument("--queries", type=int, default=4, help="built-in domain queries edited")
    _model_args(p)
    p.set_defaults(func=cmd_bench_evaluation)
    p = bench.add_parser("store", help="reader latency on a synthetic 32 x 11008 store")
    p.add_argument("--queries", type=int, default=10_000)
    p.set_defaults(func=cmd_bench_store)
    p = bench.add_parser("processes", help="queries per minute with 1 and 2 processes")
    p.add_argument("--queries", type=int, default=8)
    _model_name_arg(p)
    p.set_defaults(func=cmd_bench_processes)
    p = bench.add_parser("explorer", help="slider latency and heatmap page time")
    _db_arg(p)
    p.set_defaults(func=cmd_bench_explorer)
    p = bench.add_parser("features", help="neuron card, live threshold and custom-question QRNCA times")
    p.set_defaults(func=cmd_bench_features)
    return parser


def _shipped_first(args: argparse.Namespace) -> None:
    """A command naming a shipped run (`--run domain-qwen2`) on the default store loads the shipped runs first, as the
    explorer's first start does, so the README's commands work on a new machine."""
    from qrcore.store import shipped

    runs = getattr(args, "run", None)
    if runs is None or getattr(args, "db", None) is not None:
        return
    with _bar("loading the shipped runs", "B") as progress:
        shipped.load_named([runs] if isinstance(runs, str) else runs, None, progress)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `qrn`: run the subcommand; a QRNError (bad arguments too) becomes one line on stderr and exit
    code 2."""
    try:
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], None] = args.func
        _shipped_first(args)
        func(args)
    except QRNError as err:
        print(f"qrn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
