"""``tunesmith sweep``: an Optuna study whose trials are ordinary tunesmith runs.

    tunesmith sweep recipes/tweeteval-emotion-head.yaml --space recipes/spaces/emotion_head.yaml \\
        --trials 12 --sampler tpe --objective validation.tuned.macro_f1

Each trial applies its sampled values to the base config (as ``--set`` would), names the run
``trial-NNNN`` and trains it through :func:`tunesmith.api.train` into ``<sweep>/trials/``: a normal run
directory that ``tunesmith compare`` and ``tunesmith eval`` read. While it trains, each validation pass is
reported to the trial, and the pruner (median or successive halving, against the trials before it) may stop
it there: the run ends with ``status: pruned`` and the trial is recorded as PRUNED. The objective is any
number the finished run reports (:mod:`tunesmith.sweep.objective`); several objectives make a
multi-objective study (no pruning: Optuna prunes single-objective studies only) whose Pareto front is marked
in the table.

The study lives in ``<sweep>/study.db`` (SQLite) unless ``--storage`` names another: any database URL
Optuna supports, or ``journal:PATH`` for a journal file. Running the command again, in the same or another
process or machine pointed at the same storage, continues the study: ``--trials N`` is the study's total
(finished + running), so several workers stop together at N between them, and no trial runs twice.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from tunesmith.api import LoopHooks, train
from tunesmith.config import RunConfig, config_from_dict, read_raw_config, set_path
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.runs import RunDir
from tunesmith.sweep.objective import default_direction, metric_value, validation_key
from tunesmith.sweep.options import PRUNERS, SAMPLERS, SweepOptions
from tunesmith.sweep.space import Param, check_space, grid_size, read_space

_STORAGE_TRIES = 5
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


@dataclass
class Sweep:
    """A resolved sweep: the base config, the parameters, where it writes and what it optimises."""

    opts: SweepOptions
    base: dict[str, Any]  # the raw base config (YAML + --set), before trial values
    cfg: RunConfig
    params: list[Param]
    dir: Path
    name: str
    objectives: list[str]
    directions: list[str]

    @property
    def trials_dir(self) -> Path:
        return self.dir / "trials"


def resolve(opts: SweepOptions) -> Sweep:
    """Read and check the config and space; fail before any trial on a bad key, value or option."""
    base = read_raw_config(opts.config, opts.overrides)
    cfg = config_from_dict(copy.deepcopy(base), str(opts.config))
    params = read_space(opts.space)
    check_space(params, base, str(opts.space))
    objectives = opts.objectives or ["val_loss"]
    directions = opts.directions or [default_direction(o) for o in objectives]
    if len(directions) != len(objectives):
        raise ConfigError(f"{len(objectives)} objective(s) but {len(directions)} --direction(s): one each")
    if bad := [d for d in directions if d not in ("minimize", "maximize")]:
        raise ConfigError(f"--direction must be minimize or maximize, got {bad}")
    if opts.sampler not in SAMPLERS or opts.pruner not in PRUNERS:
        raise ConfigError(f"--sampler is one of {SAMPLERS}, --pruner one of {PRUNERS}")
    if opts.prune_warmup < 0:
        raise ConfigError(f"--prune-warmup is a number of training steps (>= 0), got {opts.prune_warmup}")
    if opts.sampler == "grid":
        grid_size(params, str(opts.space))  # a continuous parameter fails here, naming it
    out = Path(opts.out) if opts.out else Path(cfg.output_dir) / f"{cfg.name}-sweep"
    name = opts.study_name or cfg.name
    return Sweep(opts, base, cfg, params, out, name, objectives, directions)


def open_storage(storage: str | None, sweep_dir: Path) -> Any:
    """The study's storage: SQLite in the sweep folder by default, ``journal:PATH``, or a database URL."""
    if storage and storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    url = storage or "sqlite:///" + str((sweep_dir / "study.db").resolve())
    # Workers sharing one SQLite file wait for each other's writes instead of failing with "locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(_STORAGE_TRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except SQLAlchemyError:
            # Two workers starting on a new database both create its tables; the loser's CREATE fails
            # ("table studies already exists"). A second look finds the tables the winner made.
            if attempt == _STORAGE_TRIES - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its ``study.stop()`` once the grid is covered: that call is only allowed
    inside ``study.optimize``, and here the budget (the grid's size by default) ends the sweep."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        pass


def _sampler(sweep: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    if sweep.opts.sampler == "grid":
        space = {p.key: p.grid(str(sweep.opts.space)) for p in sweep.params}
        return _GridSampler(space, seed=seed)
    if sweep.opts.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(sweep))


def startup_trials(sweep: Sweep) -> int:
    """TPE's random trials before it models the space: as given, else a third of the budget within 2..10."""
    if sweep.opts.startup_trials is not None:
        return sweep.opts.startup_trials
    return min(10, max(2, budget(sweep) // 3))


class _SeededPerTrial(optuna.samplers.BaseSampler):
    """The random or TPE sampler, built afresh for each trial with the seed ``base + trial number``. Trial
    numbers are unique across every worker of a study, so two workers that start at the same moment still
    draw different values (a seed taken from the trials a worker found at start gave both the same seed and
    the same draws), and one worker alone draws the same values on every rerun. The cost is rebuilding the
    sampler per trial; these samplers keep no state between trials beyond their random generator (they read
    the history from the storage). Not for the grid: its seed fixes the order of the grid, which each trial
    number then indexes, so one seed for the whole study is what keeps its points distinct."""

    def __init__(self, sweep: Sweep, base_seed: int) -> None:
        self._sweep, self._base_seed = sweep, base_seed
        self._inner = _sampler(sweep, base_seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._inner = _sampler(self._sweep, self._base_seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, space: dict) -> dict:
        return self._inner.sample_relative(study, trial, space)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, name: str, distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def after_trial(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.opts.pruner == "none" or len(sweep.objectives) > 1:
        return optuna.pruners.NopPruner()
    if sweep.opts.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=sweep.opts.prune_warmup or "auto")
    return optuna.pruners.MedianPruner(
        n_startup_trials=sweep.opts.prune_after, n_warmup_steps=sweep.opts.prune_warmup
    )


def open_study(sweep: Sweep) -> optuna.Study:
    """Create or continue the study. A random or TPE trial's draws are seeded by the run seed plus the
    trial's number (:class:`_SeededPerTrial`), so a study is reproducible and no two trials, of any worker,
    share a seed; the grid is shuffled once by the run seed and trial numbers pick its points."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    seed = sweep.cfg.seed if sweep.opts.seed is None else sweep.opts.seed
    return optuna.create_study(
        storage=open_storage(sweep.opts.storage, sweep.dir),
        study_name=sweep.name,
        directions=sweep.directions,
        sampler=_sampler(sweep, seed) if sweep.opts.sampler == "grid" else _SeededPerTrial(sweep, seed),
        pruner=_pruner(sweep),
        load_if_exists=True,
    )


def budget(sweep: Sweep) -> int:
    if sweep.opts.trials is not None:
        return sweep.opts.trials
    return grid_size(sweep.params, str(sweep.opts.space)) if sweep.opts.sampler == "grid" else 10


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of this machine whose worker process is gone (killed, machine rebooted) as FAIL,
    so a rerun's budget does not count them as in flight forever. Returns their numbers."""
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and (pid == os.getpid() or not _alive(pid)):
            study.tell(t.number, state=TrialState.FAIL)
            dead.append(t.number)
    return dead


def _used(study: optuna.Study, below: int | None = None) -> int:
    """Trials that count against the budget (finished or running), optionally only those numbered lower."""
    trials = study.get_trials(deepcopy=False, states=_COUNTED)
    return sum(1 for t in trials if (below is None or t.number < below) and "skipped" not in t.user_attrs)


def trial_config(sweep: Sweep, number: int, values: dict[str, Any]) -> RunConfig:
    """The base config with the trial's values, run as ``<sweep>/trials/trial-NNNN``."""
    raw = copy.deepcopy(sweep.base)
    for key, value in values.items():
        set_path(raw, key, value, f"sweep parameter {key}")
    raw["name"] = f"trial-{number:04d}"
    raw["output_dir"] = str(sweep.trials_dir)
    if raw.get("tracking") and not raw.get("experiment"):
        raw["experiment"] = sweep.name  # MLflow files every trial of the sweep under one experiment
    return config_from_dict(raw, f"{sweep.opts.config} + trial {number} {values}")


def _pruning_hook(trial: optuna.Trial, sweep: Sweep) -> LoopHooks:
    """Report each validation pass to the trial and stop the run when the pruner says so.

    The reported value is the pass's own version of the objective (``val_macro_f1`` for
    ``validation.tuned.macro_f1``) when it has one, else the validation loss, negated for a maximised
    objective so that "better" points the study's way."""
    key = validation_key(sweep.objectives[0])
    sign = 1.0 if sweep.directions[0] == "minimize" else -1.0

    def on_validation(step: int, scores: dict[str, float]) -> bool:
        value = scores[key] if key in scores else sign * scores["val_loss"]
        trial.report(value, step)
        return trial.should_prune()

    return LoopHooks(on_validation=[on_validation] if len(sweep.objectives) == 1 else [])


def run_trial(sweep: Sweep, study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """Train one trial's run and tell the study how it ended; returns its state."""
    values = {p.key: p.suggest(trial) for p in sweep.params}
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    t0 = time.perf_counter()
    try:
        cfg = trial_config(sweep, trial.number, values)
        trial.set_user_attr("run_dir", str(cfg.run_dir))
        print(f"tunesmith: sweep {sweep.name}: trial {trial.number} {values}")
        summary = train(cfg, hooks=_pruning_hook(trial, sweep))
    except TunesmithError as err:  # this trial's values or run failed; the sweep goes on
        print(f"tunesmith: trial {trial.number} failed: {err}")
        trial.set_user_attr("error", str(err)[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
    status = summary["status"]
    trial.set_user_attr("status", status)
    if status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if status == "interrupted":  # Ctrl-C inside the run: record it and stop the sweep
        study.tell(trial, state=TrialState.FAIL)
        raise KeyboardInterrupt
    scores = [metric_value(RunDir(cfg.run_dir), summary, o) for o in sweep.objectives]
    study.tell(trial, scores)
    return TrialState.COMPLETE


def work(sweep: Sweep, study: optuna.Study) -> int:
    """This worker's share: trials until the study's budget or this worker's timeout. Returns how many
    trials this worker ran."""
    total, ran, t0 = budget(sweep), 0, time.monotonic()
    for number in fail_dead_trials(study):
        print(f"tunesmith: trial {number} was left running by a process that is gone; marked failed")
    while _used(study) < total:
        if sweep.opts.timeout is not None and time.monotonic() - t0 >= sweep.opts.timeout:
            print(f"tunesmith: sweep {sweep.name}: --timeout {sweep.opts.timeout:g}s reached")
            break
        trial = study.ask()
        if _used(study, below=trial.number) >= total:  # another worker took the last slot meanwhile
            trial.set_user_attr("skipped", "budget reached")
            study.tell(trial, state=TrialState.FAIL)
            break
        try:
            run_trial(sweep, study, trial)
        except BaseException:  # a missing objective, Ctrl-C, a bug: the trial is over, and so is the sweep
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        ran += 1
    return ran
