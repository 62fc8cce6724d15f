"""``tunesmith plan CONFIG [--models a,b,c]``: which model and method fit this machine, how fast, how long.

tunesmith plan recipes/lora.yaml --models default,SmolLM2-360M-Instruct,Qwen2.5-1.5B-Instruct
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from tunesmith.io import write_json_atomic


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="predict memory, speed and time per candidate model and method; recommend one"
    )
    p.add_argument("config", help="the run's YAML config: its data, batch and epochs are what is planned")
    p.add_argument(
        "--models",
        help="comma-separated candidates: default, local model directories, or known hub ids "
        "(tunesmith/plan/known_models.json, e.g. Qwen2.5-1.5B-Instruct); default: the config's model",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--seconds", type=float, default=10.0, help="calibration time (default 10)")
    p.add_argument("--max-hours", type=float, default=12.0, help="longest acceptable run (default 12)")
    p.add_argument("--json", help="also write the plan as JSON to this file")
    p.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config  # deferred: `tunesmith --help` loads no model stack
    from tunesmith.plan import estimate as est  # deferred: as above
    from tunesmith.plan.candidates import parameter_count, resolve_candidate
    from tunesmith.plan.report import recommend, table

    cfg = load_config(args.config, args.set)
    names = [n.strip() for n in (args.models or cfg.model.name).split(",") if n.strip()]
    candidates = [resolve_candidate(n) for n in names]  # unknown names fail before any work
    shape = est.data_shape(cfg)
    cal = est.calibrate(args.seconds, min(128, shape.width), shape.precision)
    budget, budget_name = est.budget_mb(cfg)
    rows = []
    for candidate in candidates:
        params = parameter_count(candidate)
        for method in est.METHODS:
            rows.append(est.estimate(candidate, method, shape, cfg, cal, budget, params))
    print(table(rows))
    print()
    print(recommend(rows, shape, cal, budget, budget_name, args.max_hours))
    if args.json:
        payload = {
            "rows": [asdict(r) for r in rows],
            "data": asdict(shape),
            "calibration": asdict(cal),
            "budget_mb": budget,
        }
        write_json_atomic(args.json, payload)
    return 0
