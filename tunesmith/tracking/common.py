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


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON tree (nested dicts), keyed by its dotted path (``train.lr``)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}."))
    return out


def numbers(tree: Any) -> dict[str, float]:
    """Every finite numeric leaf of a JSON tree, keyed by its dotted path (bools and strings left out)."""
    return {
        path: float(value)
        for path, value in leaves(tree).items()
        if not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    }


def flat_params(tree: Any) -> dict[str, str]:
    """Every leaf of a config tree as text, keyed by its dotted path (``train.lr`` -> ``'0.0002'``)."""
    return {path: str(value) for path, value in leaves(tree).items()}


def step_metrics(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, numeric values) of a metrics row; the step itself and non-numbers are not metrics."""
    values = numbers({k: v for k, v in row.items() if k not in ("step", "epoch")})
    return int(row.get("step", 0)), values
