"""Overfitting diagnostics from metrics.jsonl: generalisation gap and a rising-validation flag.

The gap is ``val_loss - train_loss`` at a step, with train loss taken as the mean of the logged training
losses since the previous evaluation (one noisy batch would make the gap jump). The flag is raised when
validation loss rose at each of the last ``patience`` evaluations while training loss fell over the same
span — the classic signature of memorising the training set — or when validation loss ended more
than ``ENDED_ABOVE_BEST`` above its best while training loss fell since then (a rise that then plateaus:
TweetEval emotion, 3 epochs of a LoRA head, validation 0.504 at step 350, 0.649 at 500, then flat at 0.634,
which the strict rule alone missed)::

    overfitting_report(read_metrics(run_dir), patience=3, restored_best=True, best_step=40)
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

ENDED_ABOVE_BEST = 0.10
"""Relative excess of the final validation loss over its best that counts as overfitting (10 %: well above
the evaluation-to-evaluation noise of a few hundred validation rows)."""


def _windowed_train_loss(rows: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """``(step, val_loss, mean train_loss since the previous eval)`` per evaluation row."""
    points, window = [], []
    for row in rows:
        if isinstance(row.get("train_loss"), int | float):
            window.append(float(row["train_loss"]))
        if isinstance(row.get("val_loss"), int | float) and window:
            points.append((int(row["step"]), float(row["val_loss"]), sum(window) / len(window)))
            window = []
    return points


def overfitting_report(
    rows: list[dict[str, Any]], patience: int, restored_best: bool, best_step: int | None
) -> dict[str, Any]:
    """Gap at the end and at the best step, the overfitting flag and the early-stopping outcome.

    Args:
        rows: metrics.jsonl rows in order (``train_loss`` rows and ``val_loss`` rows, each with ``step``).
        patience: Consecutive validation-loss increases (with falling train loss) that raise the flag.
        restored_best: Whether training restored the best checkpoint's weights at the end.
        best_step: Step of the lowest validation loss.

    Returns:
        ``{"gap_end", "gap_best", "overfitting", "message", "restored_best", "best_step"}``; gaps are None
        without validation rows.
    """
    points = _windowed_train_loss(rows)
    out: dict[str, Any] = {"restored_best": restored_best, "best_step": best_step}
    if not points:
        return {
            **out,
            "gap_end": None,
            "gap_best": None,
            "overfitting": False,
            "message": "no validation loss",
        }
    last = points[-1]
    best = (
        min(points, key=lambda p: p[1])
        if best_step is None
        else next((p for p in points if p[0] == best_step), min(points, key=lambda p: p[1]))
    )
    tail = points[-(patience + 1) :]
    rising = len(tail) == patience + 1 and all(b[1] > a[1] for a, b in pairwise(tail))
    falling = len(tail) == patience + 1 and tail[-1][2] < tail[0][2]
    ended_above = best[0] < last[0] and last[1] > best[1] * (1 + ENDED_ABOVE_BEST) and last[2] < best[2]
    flag = (rising and falling) or ended_above
    if rising and falling:
        message = (
            f"overfitting: validation loss rose for {patience} evaluations "
            f"(steps {tail[0][0]}-{tail[-1][0]}) while training loss fell"
        )
    elif ended_above:
        message = (
            f"overfitting: validation loss ended {last[1] / best[1] - 1:.0%} above its best (step {best[0]}: "
            f"{best[1]:.4f} -> {last[1]:.4f} at step {last[0]}) while training loss fell "
            f"({best[2]:.4f} -> {last[2]:.4f})"
        )
    else:
        message = "no sign of overfitting"
    if restored_best:
        message += f"; training finished on the best checkpoint's weights (step {best[0]})"
    return {
        **out,
        "gap_end": round(last[1] - last[2], 6),
        "gap_best": round(best[1] - best[2], 6),
        "overfitting": flag,
        "message": message,
    }
