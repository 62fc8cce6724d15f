"""``tunesmith sweep``: parse, run the sweep, print the table (see docs/sweeps.md)."""

from __future__ import annotations

import argparse

from tunesmith.sweep.options import PRUNERS, SAMPLERS


def _sweep(args: argparse.Namespace) -> int:
    from tunesmith.sweep.outputs import markdown
    from tunesmith.sweep.run import SweepOptions, sweep  # deferred: `tunesmith --help` loads no Optuna

    opts = SweepOptions(
        config=args.config,
        space=args.space,
        trials=args.trials,
        timeout=args.timeout,
        sampler=args.sampler,
        storage=args.storage,
        objectives=args.objective or ["val_loss"],
        directions=args.direction or None,
        pruner=args.pruner,
        prune_after=args.prune_after,
        prune_warmup=args.prune_warmup,
        startup_trials=args.startup_trials,
        out=args.out,
        study_name=args.study,
        seed=args.seed,
        overrides=args.set,
    )
    result = sweep(opts)
    print(markdown(result["headers"], result["rows"]), end="")
    best = result["best"]
    if best is not None:
        print(f"tunesmith: best trial {best.number}: {best.params} -> {result['paths']['best.yaml']}")
    print(f"tunesmith: sweep folder {result['dir']} (trials.csv, trials.md, report.html, best.yaml)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyperparameter sweep (Optuna): trials are normal runs; table, best.yaml, report.html",
        description="Search config values in SPACE for the best objective; rerun to continue the study.",
    )
    p.add_argument("config", help="the base YAML config every trial starts from")
    p.add_argument(
        "--space", required=True, help="YAML: config path -> {log_uniform|uniform|int|choice: ...}"
    )
    p.add_argument("--trials", type=int, help="the study's total trials (default: grid size, else 10)")
    p.add_argument("--timeout", type=float, help="seconds for this worker (the trial in flight finishes)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    p.add_argument(
        "--storage",
        help="study storage shared by workers: a database URL (sqlite:///x.db, postgresql://...) or "
        "journal:PATH (default: SQLite in the sweep folder)",
    )
    p.add_argument(
        "--objective",
        action="append",
        help="a number the run reports, as a dotted path into summary.json (eval. optional) or a "
        "metrics.jsonl key; repeat for multi-objective (default: val_loss)",
    )
    p.add_argument(
        "--direction",
        action="append",
        choices=["minimize", "maximize"],
        help="one per --objective (default: minimize losses, seconds, memory; maximize the rest)",
    )
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="stop bad trials at validation passes")
    p.add_argument("--prune-after", type=int, default=2, help="finished trials before the median pruner acts")
    p.add_argument(
        "--prune-warmup", type=int, default=0, help="training steps of a trial before it may be pruned"
    )
    p.add_argument(
        "--startup-trials",
        type=int,
        help="TPE: random trials before it models the space (default: a third of --trials, 2 to 10)",
    )
    p.add_argument("--out", help="sweep folder (default: <output_dir>/<name>-sweep)")
    p.add_argument("--study", help="study name in the storage (default: the config's name)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the config's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config")
    p.set_defaults(func=_sweep)
