"""What every tracker shares: the protocol and the flattening of configs, rows and summaries."""

from __future__ import annotations

import math
from typing import Any, Protocol


class Tracker(Protocol):
    def log_row(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row (a training step or a validation pass)."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended (completed, interrupted or pruned): summary metrics and the run's files."""

    def fail(self) -> None:
        """The run raised: close the tracker's record as failed."""


def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every finite numeric leaf of a JSON tree, keyed by its dotted path (bools and strings left out)."""
    if isinstance(tree, dict):
        out: dict[str, float] = {}
        for key, value in tree.items():
            out.update(numbers(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, bool) or not isinstance(tree, int | float) or not math.isfinite(tree):
        return {}
    return {prefix.rstrip("."): float(tree)}


def flat_params(tree: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf of a config tree as text, keyed by its dotted path (``train.lr`` -> ``'0.0002'``)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flat_params(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(tree)}


def step_metrics(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, numeric values) of a metrics row; the step itself and non-numbers are not metrics."""
    values = numbers({k: v for k, v in row.items() if k not in ("step", "epoch")})
    return int(row.get("step", 0)), values
