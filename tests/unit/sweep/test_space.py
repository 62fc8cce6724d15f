"""Space files: the four distributions, and errors that name the key and the file before any trial runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tunesmith.errors import ConfigError
from tunesmith.sweep.objective import default_direction, metric_value, validation_key
from tunesmith.sweep.options import SweepOptions
from tunesmith.sweep.space import check_space, grid_size, read_space
from tunesmith.sweep.study import resolve, trial_config

from .conftest import write_space

BASE = {"model": {"head": "classification"}, "method": {"name": "lora"}}


def test_each_distribution_is_read_with_its_bounds(tmp_path):
    path = write_space(
        tmp_path / "s.yaml",
        {
            "train.lr": {"log_uniform": [1e-5, 3e-3]},
            "train.epochs": {"uniform": [1, 3]},
            "train.warmup_steps": {"int": [0, 3]},
            "method.r": {"choice": [8, 16, 32]},
        },
    )
    params = read_space(path)
    assert [(p.key, p.kind) for p in params] == [
        ("train.lr", "log_uniform"),
        ("train.epochs", "uniform"),
        ("train.warmup_steps", "int"),
        ("method.r", "choice"),
    ]
    assert params[0].ends() == [1e-5, 3e-3] and params[2].grid(path) == [0, 1, 2, 3]
    check_space(params, BASE, path)  # every key exists and every end is a valid value
    with pytest.raises(ConfigError, match=r"s.yaml: train.lr: the grid sampler needs choice or int"):
        grid_size(params, path)
    assert grid_size(params[2:], path) == 4 * 3


def test_unknown_key_names_the_key_the_file_and_a_close_match(tmp_path):
    path = write_space(tmp_path / "space.yaml", {"train.lrr": {"log_uniform": [1e-5, 1e-3]}})
    with pytest.raises(ConfigError) as err:
        check_space(read_space(path), BASE, path)
    assert str(err.value).startswith(f"{path}: train.lrr: not a key of the run config ('lrr' unknown")
    assert "did you mean lr?" in str(err.value)
    # a key of another method than the base config's: unknown too
    path = write_space(tmp_path / "space.yaml", {"method.bottleneck": {"choice": [8, 16]}})
    with pytest.raises(ConfigError, match=r"space.yaml: method.bottleneck: not a key"):
        check_space(read_space(path), BASE, path)


def test_a_value_the_schema_rejects_is_an_error_before_any_trial(tmp_path):
    path = write_space(tmp_path / "space.yaml", {"method.r": {"int": [0, 4]}})
    with pytest.raises(ConfigError, match=r"space.yaml: method.r: the value 0 is not valid"):
        check_space(read_space(path), BASE, path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"uniform": [1, 2], "choice": [1]}, "give exactly one of"),
        ({"log_uniform": [0, 1]}, "log_uniform needs low > 0"),
        ({"int": [4, 2]}, "low must be below high"),
        ({"normal": [0, 1]}, "normal: unknown key"),
        ({"choice": [8, 8]}, "choice values repeat"),
    ],
)
def test_malformed_distributions_name_the_parameter(tmp_path, spec, message):
    path = write_space(tmp_path / "s.yaml", {"train.lr": spec})
    with pytest.raises(ConfigError, match=message) as err:
        read_space(path)
    assert "parameter train.lr" in str(err.value)


def test_sweep_options_are_checked_before_any_trial(base_config, tmp_path):
    config, _ = base_config
    space = write_space(tmp_path / "s.yaml", {"train.lr": {"uniform": [1e-3, 1e-2]}})
    with pytest.raises(ConfigError, match="grid sampler needs choice or int"):
        resolve(SweepOptions(config, space, sampler="grid"))
    with pytest.raises(ConfigError, match="2 objective"):
        resolve(
            SweepOptions(config, space, objectives=["val_loss", "timings.train_s"], directions=["minimize"])
        )
    sweep = resolve(SweepOptions(config, space, objectives=["validation.tuned.macro_f1", "timings.train_s"]))
    assert sweep.directions == ["maximize", "minimize"]
    assert sweep.dir == tmp_path / "runs" / "tiny-sweep" and sweep.name == "tiny"


def test_objective_paths_read_the_summary_and_the_last_validation_pass(tmp_path):
    from tunesmith.runs import RunDir

    run = RunDir(tmp_path)
    run.metrics.write_text('{"step": 2, "val_loss": 0.9}\n{"step": 4, "val_loss": 0.7}\n{"step": 4}\n')
    summary = {"eval": {"validation": {"tuned": {"f1_macro": 0.5}}}, "timings": {"train_s": 3}}
    assert metric_value(run, summary, "validation.tuned.macro_f1") == 0.5
    assert metric_value(run, summary, "eval.validation.tuned.f1_macro") == 0.5
    assert metric_value(run, summary, "timings.train_s") == 3.0
    assert metric_value(run, summary, "val_loss") == 0.7
    with pytest.raises(Exception, match=r"objective 'val_acc'.*this run has: eval.validation.tuned.f1_macro"):
        metric_value(run, summary, "val_acc")
    assert [
        default_direction(p) for p in ("val_loss", "timings.train_s", "peak_memory_mb", "x.f1_macro")
    ] == [
        "minimize",
        "minimize",
        "minimize",
        "maximize",
    ]
    assert validation_key("validation.tuned.f1_macro") == "val_macro_f1"
    assert validation_key("val_loss") == "val_loss"


def test_a_trial_is_the_base_config_with_its_values_under_the_sweep_folder(base_config, tmp_path):
    config, _ = base_config
    space = write_space(tmp_path / "s.yaml", {"method.r": {"choice": [2, 8]}})
    sweep = resolve(SweepOptions(config, space, overrides=["tracking=[mlflow]"], study_name="emo"))
    cfg = trial_config(sweep, 7, {"method.r": 8})
    assert (cfg.name, cfg.output_dir, cfg.method.r) == ("trial-0007", str(sweep.dir / "trials"), 8)
    assert cfg.experiment == "emo"  # every trial of the sweep in one MLflow experiment
    assert cfg.train.lr == 1e-2 and cfg.tracking == ["mlflow"]  # the rest is the base config + --set


def test_the_shipped_emotion_space_fits_the_emotion_head_recipe():
    root = Path(__file__).resolve().parents[3]
    space = root / "recipes" / "spaces" / "emotion_head.yaml"
    params = read_space(space)
    check_space(
        params, yaml.safe_load((root / "recipes" / "tweeteval-emotion-head.yaml").read_text()), str(space)
    )
    assert [p.key for p in params] == ["train.lr", "method.r", "train.epochs", "train.class_weights"]


def test_a_trial_left_running_by_a_dead_worker_is_marked_failed(tmp_path):
    import socket
    import subprocess
    import sys

    import optuna

    from tunesmith.sweep.study import _used, fail_dead_trials

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    for pid in (gone.pid, os.getppid()):  # a dead worker's trial, and a live process's
        trial = study.ask()
        trial.set_user_attr("pid", pid)
        trial.set_user_attr("host", socket.gethostname())
    assert _used(study) == 2
    assert fail_dead_trials(study) == [0]
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]


def test_pruner_and_sampler_follow_the_options(base_config, tmp_path):
    import optuna

    from tunesmith.sweep.study import _pruner, _sampler

    config, _ = base_config
    space = write_space(tmp_path / "s.yaml", {"method.r": {"choice": [2, 8]}})

    def built(**options):
        sweep = resolve(SweepOptions(config, space, **options))
        return type(_pruner(sweep)).__name__, type(_sampler(sweep, 0)).__name__

    assert built() == ("MedianPruner", "TPESampler")
    assert built(pruner="halving", sampler="random") == ("SuccessiveHalvingPruner", "RandomSampler")
    assert built(pruner="none", sampler="grid") == ("NopPruner", "_GridSampler")
    # Optuna prunes single-objective studies only
    assert built(objectives=["val_loss", "timings.train_s"])[0] == "NopPruner"
    assert _pruner(resolve(SweepOptions(config, space, prune_after=3)))._n_startup_trials == 3
    assert _pruner(resolve(SweepOptions(config, space, prune_warmup=100)))._n_warmup_steps == 100
    halving = _pruner(resolve(SweepOptions(config, space, pruner="halving", prune_warmup=100)))
    assert halving._min_resource == 100
    with pytest.raises(ConfigError, match="--prune-warmup is a number of training steps"):
        resolve(SweepOptions(config, space, prune_warmup=-1))

    # TPE models the space after a third of the budget (2..10), not after Optuna's fixed 10
    def startup(**options):
        return _sampler(resolve(SweepOptions(config, space, **options)), 0)._n_startup_trials

    assert [startup(trials=n) for n in (3, 12, 60)] == [2, 4, 10]
    assert startup(startup_trials=7) == 7
    assert isinstance(
        _sampler(resolve(SweepOptions(config, space, sampler="grid")), 0), optuna.samplers.GridSampler
    )


def test_a_worker_that_loses_the_table_creation_race_looks_again(tmp_path, monkeypatch):
    import optuna
    from sqlalchemy.exc import OperationalError

    from tunesmith.sweep import study as study_module

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, engine_kwargs=None):
        calls.append(url)
        if len(calls) == 1:  # what the second of two new workers sees while the first creates the tables
            raise OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, engine_kwargs=engine_kwargs)

    monkeypatch.setattr(study_module.optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    storage = study_module.open_storage(None, tmp_path)
    assert calls == [f"sqlite:///{tmp_path.resolve() / 'study.db'}"] * 2
    assert isinstance(storage, real) and (tmp_path / "study.db").exists()
