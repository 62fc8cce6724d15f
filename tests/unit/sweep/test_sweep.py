"""Sweeps end to end on a tiny classification head: grid, best.yaml, pruning, resuming, two workers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tunesmith.config import load_config
from tunesmith.runs import RunDir
from tunesmith.sweep.run import SweepOptions, sweep
from tunesmith.sweep.study import open_study, resolve

from .conftest import write_space


def _last_val_loss(run_dir: str) -> float:
    return [r["val_loss"] for r in RunDir(run_dir).read_metrics() if "val_loss" in r][-1]


def test_grid_of_two_runs_two_trials_and_best_yaml_reproduces_the_best(base_config, tmp_path):
    config, _ = base_config
    space = write_space(tmp_path / "s.yaml", {"train.lr": {"choice": [1e-3, 3e-2]}})
    result = sweep(SweepOptions(config, space, sampler="grid"))
    out = tmp_path / "runs" / "tiny-sweep"
    with open(out / "trials.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["trial"], r["state"]) for r in table] == [("0", "complete"), ("1", "complete")]
    assert {float(r["train.lr"]) for r in table} == {1e-3, 3e-2}
    # each trial is a normal run directory whose val_loss is the table's objective
    for row in table:
        assert Path(row["run"], "adapter").is_dir() and Path(row["run"]).parent == out / "trials"
        assert float(row["val_loss"]) == _last_val_loss(row["run"])
        assert load_config(Path(row["run"], "config.yaml")).train.lr == float(row["train.lr"])
    best_row = min(table, key=lambda r: float(r["val_loss"]))
    assert result["best"].number == int(best_row["trial"]) and result["ran"] == 2
    best = load_config(out / "best.yaml").model_dump()
    trial = load_config(Path(best_row["run"], "config.yaml")).model_dump()
    assert best.pop("name") == "tiny-best" and trial.pop("name") == f"trial-{int(best_row['trial']):04d}"
    assert best.pop("output_dir") == str(tmp_path / "runs") and trial.pop("output_dir") == str(out / "trials")
    assert best == trial
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # history, importances, parallel coordinates
    assert (
        (out / "trials.md").read_text().startswith("| trial | state | train.lr | val_loss | seconds | run |")
    )


def test_median_pruner_stops_a_diverging_trial_and_a_rerun_continues_the_study(base_config, tmp_path):
    config, _ = base_config
    storage = f"journal:{tmp_path / 'study.journal'}"
    # a rerun may narrow or move a range (not change a choice list: Optuna refuses that)
    good = write_space(tmp_path / "good.yaml", {"train.lr": {"uniform": [0.009, 0.011]}})
    bad = write_space(tmp_path / "bad.yaml", {"train.lr": {"uniform": [40.0, 50.0]}})
    options = {"sampler": "random", "storage": storage, "prune_after": 1}
    first = sweep(SweepOptions(config, good, trials=1, **options))
    trial0 = Path(first["rows"][0][-1])
    stamp = trial0.joinpath("summary.json").stat().st_mtime_ns
    second = sweep(SweepOptions(config, bad, trials=2, **options))
    assert second["ran"] == 1 and [r[:2] for r in second["rows"]] == [[0, "complete"], [1, "pruned"]]
    assert trial0.joinpath("summary.json").stat().st_mtime_ns == stamp  # trial 0 was not run again
    pruned = RunDir(second["rows"][1][-1])
    assert pruned.read_summary()["status"] == "pruned" and pruned.saved() is None
    # stopped at the first validation pass (step 2 of 6): no training step after it
    assert max(r["step"] for r in pruned.read_metrics()) == 2
    study = optuna.load_study(
        study_name="tiny",
        storage=optuna.storages.journal.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
        ),
    )
    assert study.trials[1].intermediate_values == {2: _last_val_loss(str(pruned.path))}
    third = sweep(SweepOptions(config, bad, trials=2, **options))  # the budget is the study's total
    assert third["ran"] == 0 and len(third["rows"]) == 2


def test_two_workers_share_one_study_without_running_a_trial_twice(base_config, tmp_path):
    config, _ = base_config
    space = write_space(tmp_path / "s.yaml", {"train.lr": {"log_uniform": [1e-3, 3e-2]}})
    out = tmp_path / "shared-sweep"
    command = [sys.executable, "-m", "tunesmith.cli", "sweep", str(config), "--space", space]
    command += ["--sampler", "random", "--trials", "4", "--pruner", "none", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)
    ]
    logs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    shown = [t for t in study.trials if "skipped" not in t.user_attrs]
    assert [t.state.name for t in shown] == ["COMPLETE"] * 4
    runs = [t.user_attrs["run_dir"] for t in shown]
    assert len(set(runs)) == 4 and all(RunDir(r).read_summary()["status"] == "completed" for r in runs)
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-{t.number:04d}" for t in shown]
    lrs = [t.params["train.lr"] for t in shown]
    assert len(set(lrs)) == 4  # different draws: each trial is seeded by its number
    assert all(
        yaml.safe_load(Path(r, "config.yaml").read_text())["train"]["lr"] == lr
        for r, lr in zip(runs, lrs, strict=True)
    )
    assert json.loads(Path(runs[0], "summary.json").read_text())["name"] == Path(runs[0]).name


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_workers_that_open_the_study_together_draw_different_values(base_config, tmp_path, sampler):
    """The race behind a CI failure: both workers open the study before either has asked for a trial. Their
    draws must still differ (seeded by trial number), and a fresh study replays the same draws."""
    config, _ = base_config
    space = write_space(tmp_path / "s.yaml", {"train.lr": {"log_uniform": [1e-3, 3e-2]}})

    def draws(out: Path) -> list[float]:
        sweep_ = resolve(SweepOptions(config, space, sampler=sampler, out=str(out)))
        first, second = open_study(sweep_), open_study(sweep_)  # both open before any trial exists
        trials = [first.ask(), second.ask(), first.ask()]
        return [sweep_.params[0].suggest(t) for t in trials]

    once, again = draws(tmp_path / "a"), draws(tmp_path / "b")
    assert len(set(once)) == 3 and once == again


def test_two_objectives_mark_the_pareto_front_and_do_not_prune(base_config, tmp_path):
    config, _ = base_config
    space = write_space(
        tmp_path / "s.yaml", {"train.lr": {"choice": [1e-3, 3e-2]}, "method.r": {"choice": [2, 4]}}
    )
    objectives = ["validation.tuned.macro_f1", "timings.train_s"]
    result = sweep(SweepOptions(config, space, sampler="random", trials=3, objectives=objectives))
    headers, rows = result["headers"], result["rows"]
    assert headers == ["trial", "state", "train.lr", "method.r", *objectives, "seconds", "pareto", "run"]
    assert [r[1] for r in rows] == ["complete"] * 3
    scores = [(r[4], r[5]) for r in rows]
    # a trial is on the front unless another is at least as good on both objectives and better on one
    front = [all(not (o[0] >= s[0] and o[1] <= s[1] and o != s) for o in scores) for s in scores]
    assert [r[7] == "*" for r in rows] == front
    for row in rows:
        summary = RunDir(row[-1]).read_summary()
        assert (row[4], row[5]) == (
            summary["eval"]["validation"]["tuned"]["f1_macro"],
            summary["timings"]["train_s"],
        )
    best = result["best"]  # the front's best first objective
    assert rows[best.number][7] == "*" and rows[best.number][4] == max(r[4] for r in rows if r[7] == "*")
    assert "Pareto front" in (tmp_path / "runs" / "tiny-sweep" / "report.html").read_text()
