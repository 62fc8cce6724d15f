"""A tracked run, read back by each tracker's own reader: the MLflow client, the EventAccumulator."""

from __future__ import annotations

import json

import pytest

from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.runs import RunDir
from tunesmith.tracking import TRACKERS, start_tracking
from tunesmith.tracking.common import flat_params, numbers, step_metrics


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("tracked")
    rows = [{"text": f"{w} {w} item {i}", "label": w} for i, w in enumerate(["apple", "rocket", "fish"] * 6)]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        [
            "name=tracked",
            f"output_dir={tmp / 'runs'}",
            f"model.name={tiny_model_dir}",
            "model.head=classification",
            f"data.train={tmp / 'train.jsonl'}",
            "data.validation_fraction=0.25",
            "method.r=4",
            "train.max_steps=4",
            "train.batch_size=4",
            "train.eval_every=2",
            "train.precision=fp32",
            "eval.probes=false",
            "tracking=[mlflow, tensorboard]",
        ],
    )
    summary = train(cfg)
    return cfg, RunDir(cfg.run_dir), summary


def test_mlflow_run_has_params_step_metrics_summary_and_artifacts(tracked_run):
    from mlflow.tracking import MlflowClient

    cfg, run, summary = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run.path.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runs")  # default: the output_dir's name
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "tracked" and found.info.status == "FINISHED"
    assert found.data.params["train.lr"] == str(cfg.train.lr) and found.data.params["method.r"] == "4"
    assert found.data.tags["tunesmith.status"] == "completed"
    logged = run.read_metrics()
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [
        (r["step"], r["train_loss"]) for r in logged if "train_loss" in r
    ]
    val = client.get_metric_history(found.info.run_id, "val_loss")
    assert [m.step for m in val] == [2, 4]
    f1 = summary["eval"]["validation"]["tuned"]["f1_macro"]
    assert found.data.metrics["eval.validation.tuned.f1_macro"] == pytest.approx(f1)
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "summary.json", "report.html", "adapter"} <= names
    adapter = {a.path for a in client.list_artifacts(found.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter


def test_tensorboard_event_files_hold_the_logged_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = tracked_run
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    logged = run.read_metrics()
    loss = [(e.step, e.value) for e in events.Scalars("train_loss")]
    expected = [(r["step"], r["train_loss"]) for r in logged if "train_loss" in r]
    assert [s for s, _ in loss] == [s for s, _ in expected] == [1, 2, 3, 4]
    assert [v for _, v in loss] == pytest.approx([v for _, v in expected], rel=1e-6)  # stored as float32
    assert [e.step for e in events.Scalars("val_macro_f1")] == [2, 4]
    (final,) = events.Scalars("summary/train.steps")
    assert (final.step, final.value) == (4, 4.0)


def test_flattening_keeps_numbers_and_paths():
    assert numbers({"a": {"b": 1, "c": True, "d": "x", "e": float("nan")}, "f": 2.5}) == {
        "a.b": 1.0,
        "f": 2.5,
    }
    assert flat_params({"train": {"lr": 1e-3, "target": ["q", "v"]}}) == {
        "train.lr": "0.001",
        "train.target": "['q', 'v']",
    }
    assert step_metrics({"step": 3, "epoch": 0.5, "train_loss": 1.5, "note": "x"}) == (3, {"train_loss": 1.5})


def test_no_tracking_by_default_and_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert cfg.tracking == [] and start_tracking(cfg, RunDir(tmp_path / "run")).trackers == []

    def missing(cfg, run):
        raise ConfigError("tracking: mlflow needs its package")

    monkeypatch.setitem(TRACKERS, "mlflow", missing)
    with pytest.raises(ConfigError, match="mlflow needs its package"):
        start_tracking(load_config(None, ["tracking=[mlflow]"]), RunDir(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"tracking\.0: Input should be 'mlflow' or 'tensorboard'"):
        load_config(None, ["tracking=[wandb]"])
