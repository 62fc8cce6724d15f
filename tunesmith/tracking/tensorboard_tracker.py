"""TensorBoard: event files under the run's ``tensorboard/`` folder (``tensorboard --logdir runs``).

Each metrics.jsonl key is a scalar series by step (``train_loss``, ``val_loss``, ``val_macro_f1``, ...);
the summary's numbers go under ``summary/`` at the run's last step, and the config as a text entry.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import RunConfig, dump_config
from tunesmith.runs import RunDir
from tunesmith.tracking.common import numbers, step_metrics


class TensorBoardTracker:
    def __init__(self, cfg: RunConfig, run: RunDir) -> None:
        # deferred: torch's writer imports the tensorboard package (the optional `tracking` extra)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.tensorboard))
        self.writer.add_text("config", "```\n" + dump_config(cfg) + "```")
        self.last_step = 0

    def log_row(self, row: dict[str, Any]) -> None:
        step, values = step_metrics(row)
        self.last_step = max(self.last_step, step)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, self.last_step)
        self.writer.add_text("status", str(summary.get("status")))
        self.writer.close()

    def fail(self) -> None:
        self.writer.add_text("status", "failed")
        self.writer.close()
