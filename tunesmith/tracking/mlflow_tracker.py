"""MLflow: one MLflow run per tunesmith run, in the experiment ``cfg.experiment`` (default: the name of
``output_dir``).

Params: every config key (dotted, as text). Metrics: each metrics.jsonl row by step while training, then the
summary's numbers (``eval.validation.tuned.macro_f1``, ``timings.train_s``, ...). Artifacts: config.yaml,
summary.json, report.html and ``adapter/`` (a full ``model/`` stays in the run directory: it is the base's
size). Local by default: ``sqlite:///<output_dir>/mlflow.db``, artifacts in ``<output_dir>/mlartifacts``;
read it back with ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`` or ``MlflowClient``. MLflow's
own usage telemetry is switched off unless the environment already decides (``MLFLOW_DISABLE_TELEMETRY``).
"""

from __future__ import annotations

import os
import re
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.io import file_lock
from tunesmith.runs import RunDir
from tunesmith.tracking.common import flat_params, numbers, step_metrics

_STATUS = {"completed": "FINISHED", "failed": "FAILED"}  # interrupted, pruned: KILLED
_MAX_PARAM = 6000  # MLflow rejects longer param values
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000  # log_batch's limits


def default_uri(cfg: RunConfig) -> str:
    return "sqlite:///" + str((Path(cfg.output_dir) / "mlflow.db").resolve())


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_-. /``; label names in metric paths may have others."""
    return re.sub(r"[^\w\-. /]", "_", name)


class MlflowTracker:
    def __init__(self, cfg: RunConfig, run: RunDir) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing phones home
        from mlflow.tracking import MlflowClient  # deferred: mlflow is loaded only by runs that track

        self.run_dir = run
        self.uri = cfg.tracking_uri or default_uri(cfg)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        experiment = cfg.experiment or Path(cfg.output_dir).resolve().name
        # The client's first touch creates and migrates a new SQLite database. Two processes doing it at
        # once (a sweep's workers) break each other's migrations ("duplicate column name"): take turns.
        local = self.uri.startswith("sqlite:///")
        with file_lock(self.uri.removeprefix("sqlite:///") + ".lock") if local else nullcontext():
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = self._experiment_id(cfg, experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=cfg.name).info.run_id
        params = flat_params(cfg.model_dump(mode="json"))
        self._batch(params=[(_key(k), v[:_MAX_PARAM]) for k, v in params.items()])
        self.client.set_tag(self.run_id, "tunesmith.run_dir", str(run.path.resolve()))

    def _experiment_id(self, cfg: RunConfig, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = None if cfg.tracking_uri else (Path(cfg.output_dir) / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # another process created it between the lookup and here (a sweep's workers)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _batch(self, metrics: dict[str, float] | None = None, step: int = 0, params: Any = ()) -> None:
        """``log_batch`` in chunks within MLflow's per-call limits (a config has ~150 keys)."""
        from mlflow.entities import Metric, Param  # deferred: see __init__

        now = int(time.time() * 1000)
        metric_list = [Metric(_key(k), v, now, step) for k, v in (metrics or {}).items()]
        param_list = [Param(k, v) for k, v in params]
        for i in range(0, len(metric_list), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metric_list[i : i + _METRICS_PER_BATCH])
        for i in range(0, len(param_list), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=param_list[i : i + _PARAMS_PER_BATCH])

    def log_row(self, row: dict[str, Any]) -> None:
        step, values = step_metrics(row)
        self._batch(values, step)

    def finish(self, summary: dict[str, Any]) -> None:
        self._batch(numbers(summary), int((summary.get("train") or {}).get("steps") or 0))
        for path in (self.run_dir.config, self.run_dir.summary, self.run_dir.report):
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        if self.run_dir.adapter.is_dir():
            self.client.log_artifacts(self.run_id, str(self.run_dir.adapter), "adapter")
        status = str(summary.get("status"))
        self.client.set_tag(self.run_id, "tunesmith.status", status)
        self.client.set_terminated(self.run_id, _STATUS.get(status, "KILLED"))

    def fail(self) -> None:
        self.client.set_tag(self.run_id, "tunesmith.status", "error")
        self.client.set_terminated(self.run_id, "FAILED")
