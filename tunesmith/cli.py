"""Command line: a thin layer over :mod:`tunesmith.api`.

tunesmith train recipes/lora.yaml --set train.max_steps=50 [--resume]   (exit 3: a `gates:` check failed)
tunesmith eval runs/lora-demo [--data FILE]
tunesmith predict runs/lora-demo --data FILE --out FILE
tunesmith chat runs/lora-demo
tunesmith demo
tunesmith sweep recipes/tweeteval-emotion-head.yaml --space recipes/spaces/emotion_head.yaml --trials 12
tunesmith plan recipes/lora.yaml --models default,Qwen2.5-1.5B-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from tunesmith.errors import TunesmithError


def headline(summary: dict[str, Any]) -> str:
    """The one-line end-of-run summary: steps, speed, time, memory and the tuned validation metrics (per
    task for multi-task and sequential runs, whose summaries carry ``tasks`` and no single tokens/s)."""
    tr = summary.get("train", {})
    speed = f", {tr['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in tr else ""
    if summary.get("tasks"):
        shown = [f"{key} {row['metric']}={row['tuned']:.4f}" for key, row in summary["tasks"].items()]
    else:
        tuned = summary.get("eval", {}).get("validation", {}).get("tuned") or {}
        shown = [f"{k}={v:.4f}" for k, v in tuned.items() if isinstance(v, float)][:4]
    return (
        f"tunesmith: {summary['name']} done: {tr.get('steps', 0)} steps{speed}, "
        f"{summary['timings']['total_s']:.0f}s, peak {summary['peak_memory_mb']:.0f} MB; " + ", ".join(shown)
    )


def _train(args: argparse.Namespace) -> int:
    from tunesmith.api import train  # deferred: `tunesmith --help` loads no command
    from tunesmith.config import load_config  # deferred: `tunesmith --help` loads no command

    if args.nproc > 1:  # one machine, N processes: re-run this command under torchrun (docs/distributed.md)
        import subprocess  # deferred: only --nproc needs it

        from tunesmith.train.distributed import launch_command, launch_env

        argv = ["train", args.config, *[a for s in args.set for a in ("--set", s)]]
        argv += ["--resume"] if args.resume else []
        return subprocess.run(launch_command(argv, args.nproc), env=launch_env(args.nproc)).returncode
    cfg = load_config(args.config, args.set)
    summary = train(cfg, resume=args.resume)
    if summary["status"] == "interrupted":
        return 130
    if summary["status"] == "worker":  # a rank other than 0: rank 0 reports
        return 0
    print(headline(summary))
    print(f"tunesmith: run directory {cfg.run_dir} (report.html, summary.json)")
    if summary["status"] == "failed":  # a gate failed: exit non-zero so a pipeline cannot promote the run
        from tunesmith.evaluate.gates import GATE_EXIT_CODE  # deferred: `tunesmith --help` loads no command

        for reason in summary.get("gates", {}).get("failures", []):
            print(f"tunesmith: gate failed: {reason}", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tunesmith.api import evaluate  # deferred: `tunesmith --help` loads no command

    print(json.dumps(evaluate(args.run_dir, data=args.data), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tunesmith.api import predict  # deferred: `tunesmith --help` loads no model stack

    # auto: a .txt output is one label id per line (classification) or one answer per line; else JSONL
    path = predict(
        args.run_dir,
        data=args.data,
        out=args.out,
        fmt=args.format,
        index=args.index,
        k=args.k,
        use_run_index=not args.no_index,
    )
    print(f"tunesmith: predictions written to {path}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tunesmith.serve.chat import chat_loop  # deferred: `tunesmith --help` loads no command

    chat_loop(
        args.run_dir,
        max_new_tokens=args.max_new_tokens,
        index=args.index,
        k=args.k,
        use_run_index=not args.no_index,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tunesmith.demo.run import run_demo  # deferred: `tunesmith --help` loads no model stack
    from tunesmith.errors import RunError

    result = run_demo(out_dir=args.out, quick=args.quick, seed=args.seed, precision=args.precision)
    if args.quick:  # a smoke run: no targets
        return 0
    if not isinstance(result.get("passed"), bool):  # no verdict is an error, never a pass
        raise RunError("the demo's result has no pass/fail verdict ('passed'); see demo_result.json")
    return 0 if result["passed"] else 1


def _add_index_args(p: argparse.ArgumentParser, into: str) -> None:
    p.add_argument(
        "--index",
        help=f"a `tunesmith rag index` to retrieve chunks into {into} (RAG / RAFT); default: the run's "
        "rag.index, if its config names one",
    )
    p.add_argument("-k", type=int, help="chunks retrieved per question (default: the run's rag.k, 4)")
    p.add_argument("--no-index", action="store_true", help="do not retrieve, even if the run names rag.index")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune an LLM on your own data.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a YAML config")
    p.add_argument("config", help="YAML config (see recipes/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4"
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes on this machine (torchrun; gloo on CPU)"
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a finished run; prints JSON metrics")
    p.add_argument("run_dir")
    p.add_argument("--data", help="file to evaluate on (default: the run's validation/test splits)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="one prediction per input line, in input order")
    p.add_argument("run_dir")
    p.add_argument(
        "--data",
        required=True,
        help="inputs: chat rows (ending with the user's turn, or training rows), prompt rows, instruction "
        "(+input) rows, or a .txt with one question (classification: one text) per line",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--format",
        choices=["auto", "labels", "jsonl", "text"],
        default="auto",
        help="labels: one label id per line (classification); text: one answer per line (line breaks "
        "inside an answer written as \\n, backslashes as \\\\); jsonl: {'prediction': ...} rows, or "
        "labels with probabilities; auto: labels (classification) or text for a .txt --out, else jsonl",
    )
    _add_index_args(p, "each prompt")
    p.set_defaults(func=_predict)

    p = sub.add_parser("chat", help="chat with a run's model in the terminal")
    p.add_argument("run_dir")
    p.add_argument("--max-new-tokens", type=int, default=128)
    _add_index_args(p, "each question")
    p.set_defaults(func=_chat)

    p = sub.add_parser("demo", help="the store-assistant demo: generate data, LoRA-tune, show before/after")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its data and run")
    p.add_argument(
        "--quick", action="store_true", help="a tiny version for smoke tests (not the real targets)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the generated store and the training run (default 0)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="train.precision; auto: bf16 on CPUs with AVX512-BF16/AMX, fp32 elsewhere",
    )
    p.set_defaults(func=_demo)

    # deferred: `tunesmith --help` loads no command
    from tunesmith.data.tools.cli import add_parser as add_data_parser

    # deferred: each sub-CLI loads only when the parser is built
    from tunesmith.evaluate.cli import add_parser as add_evidence_parser
    from tunesmith.export.cli import add_parser as add_export_parser
    from tunesmith.jobs.cli import add_parser as add_jobs_parser
    from tunesmith.plan.cli import add_parser as add_plan_parser
    from tunesmith.rag.cli import add_parser as add_rag_parser
    from tunesmith.serve.cli import add_parser as add_serve_parser
    from tunesmith.sweep.cli import add_parser as add_sweep_parser
    from tunesmith.ui.cli import add_parser as add_ui_parser

    add_data_parser(sub)
    add_evidence_parser(sub)  # cv, bias, drift, compare
    add_export_parser(sub)
    add_jobs_parser(sub)
    add_plan_parser(sub)
    add_rag_parser(sub)
    add_serve_parser(sub)
    add_sweep_parser(sub)
    add_ui_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TunesmithError as err:
        print(f"tunesmith: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
