"""``tunesmith cv | bias | drift | compare``: the evidence commands (thin; the work is in this package and,
for cv, in tunesmith/pipelines/cv.py). A face like tunesmith/cli.py: it may call the API.

tunesmith cv recipes/x.yaml --folds 5 [--group-column user] [--set train.max_steps=50]
tunesmith bias runs/x [--data F] [--group-column group] [--lists my_pairs.json]
tunesmith drift runs/x --data new.jsonl [--out DIR]      (exit 0 stable, 4 drifting, 5 retrain)
tunesmith monitor traffic/ --run runs/x [--out DIR]      (served traffic vs training data; exit as drift)
tunesmith compare runs/a runs/b ... [--out DIR]
"""

from __future__ import annotations

import argparse
from typing import Any

DRIFT_EXIT_CODES = {"stable": 0, "drifting": 4, "retrain": 5}
"""Exit status of ``tunesmith drift`` per verdict, so a scheduler can act on it."""


def _cv(args: argparse.Namespace) -> int:
    from tunesmith.pipelines.cv import cross_validate  # deferred: `tunesmith --help` loads no command

    result = cross_validate(args.config, args.folds, args.set, args.group_column)
    print(f"tunesmith: {args.folds}-fold cross-validation ({result['splitter']}), validation metrics:")
    for metric, ms in result["mean_std"].items():
        folds = ", ".join(f"{row.get(metric, float('nan')):.4f}" for row in result["per_fold"])
        print(f"  {metric:>16}: {ms['mean']:.4f} ± {ms['std']:.4f}   folds: {folds}")
    return 0


def _bias(args: argparse.Namespace) -> int:
    from tunesmith.evaluate.bias import bias_audit  # deferred: `tunesmith --help` loads no command

    result = bias_audit(args.run_dir, args.data, args.group_column, args.lists)
    for category, by_model in result["categories"].items():
        shown = "; ".join(
            f"{name}: " + ", ".join(f"{k}={v:g}" for k, v in stats.items())
            for name, stats in by_model.items()
        )
        print(f"tunesmith: bias {category}: {shown}")
    if "groups" in result:
        print(f"tunesmith: {result['groups']['message']}")
    print(f"tunesmith: written to {args.run_dir}/bias.json (and the report)")
    return 0


def _drift(args: argparse.Namespace) -> int:
    from tunesmith.api import evaluate  # deferred: `tunesmith --help` loads no command
    from tunesmith.evaluate.drift import drift_report  # deferred: `tunesmith --help` loads no command

    result = drift_report(args.run_dir, args.data, args.out, evaluate=evaluate)
    stats = ", ".join(f"{k}={v}" for k, v in result["stats"].items() if not isinstance(v, str))
    print(f"tunesmith: drift verdict: {result['verdict'].upper()} ({stats})")
    for reason in result["reasons"]:
        print(f"  {reason}")
    return DRIFT_EXIT_CODES[result["verdict"]]


def _monitor(args: argparse.Namespace) -> int:
    from tunesmith.evaluate.monitor import monitor_report  # deferred: `tunesmith --help` loads no command

    result = monitor_report(args.dir, args.run, args.out, args.max_examples)
    stats = ", ".join(f"{k}={v}" for k, v in result["stats"].items())
    print(f"tunesmith: monitor verdict: {result['verdict'].upper()} ({stats})")
    for reason in result["reasons"]:
        print(f"  {reason}")
    print(f"tunesmith: report in {args.out or f'{args.dir}/monitor'}/monitor.html")
    return DRIFT_EXIT_CODES[result["verdict"]]


def _compare(args: argparse.Namespace) -> int:
    from tunesmith.evaluate.compare import compare_runs  # deferred: `tunesmith --help` loads no command

    result = compare_runs(args.run_dirs, args.out)
    print(result["table"])
    print(f"tunesmith: compare.json and compare.png written to {args.out}")
    return 0


def add_parser(sub: Any) -> None:
    """Register the evidence subcommands on the top-level parser's subparsers."""
    p = sub.add_parser("cv", help="K-fold cross-validation of a config (stratified for classification)")
    p.add_argument("config")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--group-column", help="keep rows with the same value of this column in one fold")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=_cv)

    p = sub.add_parser("bias", help="counterfactual bias audit of a finished run (base vs tuned)")
    p.add_argument("run_dir")
    p.add_argument("--data", help="file to audit (default: the run's validation/test file)")
    p.add_argument("--group-column", help="report per-group metrics and the largest gap")
    p.add_argument("--lists", help="JSON with extra substitution pairs per category")
    p.set_defaults(func=_bias)

    p = sub.add_parser("drift", help="compare new inputs with a run's training inputs; verdict + report")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="output folder (default RUN_DIR/drift)")
    p.set_defaults(func=_drift)

    p = sub.add_parser("monitor", help="captured traffic (serve --capture) vs a run's training data; trends")
    p.add_argument("dir", help="the DIR of `tunesmith serve --capture DIR`")
    p.add_argument("--run", required=True, help="the run whose training data is the reference")
    p.add_argument("--out", help="output folder (default DIR/monitor)")
    p.add_argument(
        "--max-examples", type=int, default=512, help="latest prompts (and training inputs) compared"
    )
    p.set_defaults(func=_monitor)

    p = sub.add_parser("compare", help="one table and plot across finished runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=".")
    p.set_defaults(func=_compare)


__all__ = ["DRIFT_EXIT_CODES", "add_parser"]
