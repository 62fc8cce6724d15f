"""What a sweep leaves in its folder, rewritten after every worker's pass:

<sweep>/trials.csv  trials.md   one row per trial: number, state, parameters, objective(s), seconds, run
<sweep>/best.yaml               the base config with the best trial's values: ``tunesmith train`` it
<sweep>/report.html             history, parameter importances, parallel coordinates (Pareto front)
<sweep>/study.db  trials/       the Optuna study (default storage) and the trials' run directories
"""

from __future__ import annotations

import copy
import csv
import html
import io
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tunesmith.config import set_path
from tunesmith.io import write_text_atomic
from tunesmith.report.html import html_image, html_section, html_table, page
from tunesmith.sweep import plots
from tunesmith.sweep.study import Sweep

BEST, TABLE_CSV, TABLE_MD, REPORT = "best.yaml", "trials.csv", "trials.md", "report.html"


def shown_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial but the budget's placeholders (a worker that lost the race for the last slot)."""
    return [t for t in study.get_trials(deepcopy=False) if "skipped" not in t.user_attrs]


def pareto_numbers(sweep: Sweep, study: optuna.Study) -> set[int]:
    return {t.number for t in study.best_trials} if len(sweep.objectives) > 1 else set()


def table(sweep: Sweep, study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): one row per trial, in trial order."""
    multi = len(sweep.objectives) > 1
    keys = [p.key for p in sweep.params]
    headers = ["trial", "state", *keys, *sweep.objectives, "seconds", *(["pareto"] if multi else []), "run"]
    front = pareto_numbers(sweep, study)
    rows = []
    for t in shown_trials(study):
        values = t.values if t.state == TrialState.COMPLETE and t.values else [None] * len(sweep.objectives)
        row = [t.number, t.state.name.lower(), *(t.params.get(k) for k in keys), *values]
        row += [t.user_attrs.get("seconds"), *(["*" if t.number in front else ""] if multi else [])]
        rows.append([*row, t.user_attrs.get("run_dir", "")])
    return headers, rows


def _csv(headers: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def best_trial(sweep: Sweep, study: optuna.Study) -> FrozenTrial | None:
    """The best finished trial; with several objectives, the Pareto trial best on the first one."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    candidates = study.best_trials if len(sweep.objectives) > 1 else done
    sign = -1.0 if sweep.directions[0] == "maximize" else 1.0
    return min(candidates, key=lambda t: (sign * t.values[0], t.number))


def best_config_text(sweep: Sweep, trial: FrozenTrial) -> str:
    """The base config (as written, plus ``--set``) with the trial's values: ready for ``tunesmith train``."""
    raw = copy.deepcopy(sweep.base)
    for key, value in trial.params.items():
        set_path(raw, key, value, f"sweep parameter {key}")
    raw["name"] = f"{sweep.cfg.name}-best"
    scores = ", ".join(f"{o}={v:.6g}" for o, v in zip(sweep.objectives, trial.values, strict=True))
    chosen = ", ".join(f"{k}={v!r}" for k, v in trial.params.items())
    header = (
        f"# The best trial of sweep {sweep.name!r}: trial {trial.number} ({scores}); written by\n"
        f"# tunesmith sweep. Its run: {trial.user_attrs.get('run_dir')}. Swept values: {chosen}.\n"
        f"#   tunesmith train {sweep.dir / BEST}\n"
        "# (from the directory the sweep ran in: relative data paths are as the base config gave them)\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def _importances(sweep: Sweep, study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the first objective; {} while there are too few finished trials to tell."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = {k for p in sweep.params for k in [p.key] if len({repr(t.params.get(k)) for t in done}) > 1}
    if len(done) < 2 or not varied:
        return {}
    try:
        return optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),  # seeded: same table, same plot
            params=sorted(varied),
            target=lambda t: t.values[0],
        )
    except (RuntimeError, ValueError):  # e.g. every finished trial scored the same
        return {}


def _plots(sweep: Sweep, study: optuna.Study) -> str:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "<p>No trial has finished yet.</p>"
    first, maximize = sweep.objectives[0], sweep.directions[0] == "maximize"
    pruned = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))]
    parts = [
        html_image(
            plots.history_png([(t.number, t.values[0]) for t in done], pruned, first, maximize), "history"
        )
    ]
    importances = _importances(sweep, study)
    if importances:
        parts.append(html_image(plots.importance_png(importances), "parameter importances"))
    columns = {p.key: [t.params[p.key] for t in done] for p in sweep.params}
    logs = {p.key for p in sweep.params if p.dist.log_uniform is not None}
    parts.append(
        html_image(
            plots.parallel_png({**columns, first: [t.values[0] for t in done]}, logs, first, maximize),
            "parallel coordinates",
        )
    )
    if len(sweep.objectives) == 2:
        front = [tuple(t.values) for t in study.best_trials]
        parts.append(
            html_image(
                plots.pareto_png([tuple(t.values) for t in done], front, sweep.objectives), "Pareto front"
            )
        )  # type: ignore[arg-type]
    return "".join(parts)


def report_html(sweep: Sweep, study: optuna.Study, headers: list[str], rows: list[list[Any]]) -> str:
    states = [t.state.name.lower() for t in shown_trials(study)]
    counts = ", ".join(f"{s}: {states.count(s)}" for s in dict.fromkeys(states))
    goal = ", ".join(f"{d} {o}" for o, d in zip(sweep.objectives, sweep.directions, strict=True))
    best = best_trial(sweep, study)
    best_line = f"best: trial {best.number}, {best.params}" if best else "no finished trial yet"
    intro = (
        f"<h1>Sweep {html.escape(sweep.name)}</h1><p>{html.escape(goal)}; sampler {sweep.opts.sampler}, "
        f"pruner {sweep.opts.pruner}; trials {html.escape(counts)}; {html.escape(best_line)}</p>"
    )
    return page(
        f"sweep {sweep.name}",
        intro
        + html_section("Plots", _plots(sweep, study))
        + html_section("Trials", html_table(headers, rows)),
    )


def write_outputs(sweep: Sweep, study: optuna.Study) -> dict[str, Any]:
    """Write the table, best.yaml and report.html; returns {"headers", "rows", "best", "paths"}."""
    headers, rows = table(sweep, study)
    write_text_atomic(sweep.dir / TABLE_CSV, _csv(headers, rows))
    write_text_atomic(sweep.dir / TABLE_MD, markdown(headers, rows))
    best = best_trial(sweep, study)
    if best is not None:
        write_text_atomic(sweep.dir / BEST, best_config_text(sweep, best))
    write_text_atomic(sweep.dir / REPORT, report_html(sweep, study, headers, rows))
    paths = {name: sweep.dir / name for name in (TABLE_CSV, TABLE_MD, REPORT)}
    if best is not None:
        paths[BEST] = sweep.dir / BEST
    return {"headers": headers, "rows": rows, "best": best, "paths": paths}
