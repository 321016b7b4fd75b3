"""The `qrn` command line: one subcommand per job; bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from qrcore.errors import QRNError


def _model_args(p: argparse.ArgumentParser) -> None:
    """--model, --dtype, --device: shared by every command that loads a model."""
    p.add_argument("--model", default="smollm2", help="smollm2 (embedded default), a .gguf file, a model folder or a hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (device_map over all GPUs)")


def _load(args: argparse.Namespace):
    """The model named by the --model/--dtype/--device arguments."""
    from qrcore.models import ModelSpec, load_model

    return load_model(ModelSpec(args.model, args.dtype, args.device))


def cmd_attribute(args: argparse.Namespace) -> None:
    """NA of one custom question: answer probabilities and the top neurons."""
    from tqdm import tqdm

    from qrcore.attribution import NeuronAttribution
    from qrcore.queries import make_query
    from qrcore.settings import AttributionSettings, PromptSettings
    from qrcore.topk import top_neurons

    query = make_query(args.question, args.option, args.answer)
    if args.steps < 1 or args.templates < 1:
        raise QRNError("--steps and --templates must be at least 1.")
    lm = _load(args)
    attr = NeuronAttribution(lm, AttributionSettings(steps=args.steps), PromptSettings(templates=args.templates))
    prompts = attr.prompts(query)
    with tqdm(total=len(prompts) * len(attr.layer_chunks), desc="attribution", unit="pass", disable=args.json) as bar:
        result = attr.attribute(query, lambda done, total: bar.update(done - bar.n))
    from qrcore.editing import letter_probs

    probs = letter_probs(lm, prompts[:1])[0]
    top = top_neurons(result.na, args.top)
    if args.json:
        print(json.dumps({"options": list(prompts[0].options), "letters": list(prompts[0].letters),
                          "probs": probs.round(6).tolist(), "correct": prompts[0].correct,
                          "correct_prob_mean": result.correct_prob, "seconds": round(result.seconds, 3),
                          "top_neurons": [{"layer": l, "neuron": n, "score": round(s, 6)} for l, n, s in top]}))
        return
    print(f"Answer probabilities (template 1, options as shown to the model):")
    for i, (letter, text, p) in enumerate(zip(prompts[0].letters, prompts[0].options, probs)):
        mark = "  <- correct" if i == prompts[0].correct else ""
        print(f"  {letter}. {text:<30} {p:.4f}{mark}")
    print(f"Mean correct-letter probability over {len(prompts)} templates: {result.correct_prob:.4f} "
          f"({result.seconds:.1f} s)")
    print(f"Top {len(top)} neurons by NA (layer, neuron, score):")
    for l, n, s in top:
        print(f"  ({l:>2}, {n:>5}, {s:+.4f})")


def cmd_bench_attribution(args: argparse.Namespace) -> None:
    """Oracle vs fast path on the same queries: seconds per query, ratio, peak memory."""
    from qrcore.bench import bench_attribution

    bench_attribution(_load(args), n_queries=args.queries, oracle_prompts=args.oracle_prompts, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(prog="qrn", description="Query-relevant neurons of LLMs (QRNCA).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("attribute", help="attribute one multiple-choice question")
    p.add_argument("--question", required=True)
    p.add_argument("--option", action="append", default=[], help="an answer option (repeat for each)")
    p.add_argument("--answer", required=True, help="the correct option, as written in --option")
    p.add_argument("--steps", type=int, default=16, help="Riemann steps m (Eq. 5)")
    p.add_argument("--templates", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _model_args(p)
    p.set_defaults(func=cmd_attribute)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="what", required=True)
    p = bench.add_parser("attribution", help="fast path vs oracle, seconds per query")
    p.add_argument("--queries", type=int, default=2, help="queries timed with the fast path")
    p.add_argument("--oracle-prompts", type=int, default=1, help="prompts timed with the (slow) oracle")
    p.add_argument("--steps", type=int, default=16)
    _model_args(p)
    p.set_defaults(func=cmd_bench_attribution)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `qrn`: run the subcommand; a QRNError becomes one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except QRNError as err:
        print(f"qrn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
