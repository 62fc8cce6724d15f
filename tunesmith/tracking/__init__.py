"""Experiment tracking: the run's params, per-step metrics, summary and files, mirrored to trackers.

    tracking: [mlflow, tensorboard]     # in the run config; [] (the default) tracks nothing

The run directory stays the record (metrics.jsonl, summary.json, report.html); trackers get copies as the run
goes, so a team's MLflow server or a TensorBoard tab shows tunesmith runs next to others. Nothing leaves the
machine unless ``tracking_uri`` names a server: MLflow writes to ``output_dir/mlflow.db`` and TensorBoard to
the run's ``tensorboard/`` folder. A tracker is registered by name in :data:`TRACKERS`; the pipeline calls
:func:`start_tracking` when the run directory exists and feeds it each metrics row and the final summary.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import RunConfig
from tunesmith.errors import ConfigError
from tunesmith.runs import RunDir
from tunesmith.tracking.common import Tracker


class Tracking:
    """All trackers of one run, fed together; with none configured every call does nothing."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_row(self, row: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_row(row)

    def finish(self, summary: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.finish(summary)

    def fail(self) -> None:
        for tracker in self.trackers:
            tracker.fail()


def _needs_extra(name: str, err: ImportError) -> ConfigError:
    return ConfigError(
        f"tracking: {name} needs its package ({err.name} is missing): pip install 'tunesmith[tracking]'"
    )


def _mlflow(cfg: RunConfig, run: RunDir) -> Tracker:
    try:
        from tunesmith.tracking.mlflow_tracker import MlflowTracker  # deferred: mlflow loads only when used

        return MlflowTracker(cfg, run)
    except ImportError as err:
        raise _needs_extra("mlflow", err) from err


def _tensorboard(cfg: RunConfig, run: RunDir) -> Tracker:
    try:
        from tunesmith.tracking.tensorboard_tracker import TensorBoardTracker  # deferred: as above

        return TensorBoardTracker(cfg, run)
    except ImportError as err:
        raise _needs_extra("tensorboard", err) from err


TRACKERS = {"mlflow": _mlflow, "tensorboard": _tensorboard}
"""``tracking:`` names -> tracker factories ``(config, run directory) -> Tracker``."""


def start_tracking(cfg: RunConfig, run: RunDir) -> Tracking:
    """Open every tracker ``cfg.tracking`` names (in that order) for the run in ``run``."""
    return Tracking([TRACKERS[name](cfg, run) for name in cfg.tracking])
