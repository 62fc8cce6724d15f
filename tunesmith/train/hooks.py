"""Observers a caller hands to the training loop: every logged row, and a say at each validation pass.

    hooks = LoopHooks(on_log=[tracker.log_row], on_validation=[pruner_says])
    train_loop(..., hooks=hooks)

``on_log`` sees each row as it goes into metrics.jsonl (experiment tracking: MLflow, TensorBoard).
``on_validation(step, scores)`` sees each validation pass (``{"val_loss": ..., "val_<score>": ...}``) and
returns True to stop the run there (a sweep's pruner): the loop then ends like a Ctrl-C without the
checkpoint, and the run's summary says ``status: pruned``. The loop owns neither: it only calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LogHook = Callable[[dict[str, Any]], None]
ValidationHook = Callable[[int, dict[str, float]], bool]


@dataclass
class LoopHooks:
    on_log: list[LogHook] = field(default_factory=list)
    on_validation: list[ValidationHook] = field(default_factory=list)

    def log(self, row: dict[str, Any]) -> None:
        for hook in self.on_log:
            hook(row)

    def should_stop(self, step: int, scores: dict[str, float]) -> bool:
        """Every hook sees the pass (no short-circuit), and any one of them may stop the run."""
        votes = [hook(step, scores) for hook in self.on_validation]
        return any(votes)

    def plus(self, other: LoopHooks | None) -> LoopHooks:
        if other is None:
            return self
        return LoopHooks(self.on_log + other.on_log, self.on_validation + other.on_validation)
