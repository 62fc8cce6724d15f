"""Plots for the run report, rendered headless to PNG bytes that the HTML page embeds as base64.

Every figure is a ``matplotlib.figure.Figure`` attached to its own Agg canvas; ``pyplot`` is never
imported. That renders on any machine (no display, no Tk) exactly like ``matplotlib.use("Agg")`` would,
but without the global switch: ``use`` also changes the backend of a caller's pyplot, so a user who imports
tunesmith from Jupyter would lose their inline plots. No pyplot also means no global figure registry to
leak figures into when a report is written in a long-running process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100
_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#d62728"
_SCORE_COLORS = {"macro_f1": "#2ca02c", "accuracy": "#9467bd"}
_MAX_TICK_CHARS = 18  # longer class names are shortened on the axes (the HTML tables keep them whole)


def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # the Agg renderer, bound to this figure only (see module docstring)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No timestamp metadata, so the same data gives the same bytes (reports diff cleanly).
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _number(value: object) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN / inf values (a diverged step)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(metrics: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for rows that have both a numeric ``step`` and a numeric ``key``."""
    steps: list[float] = []
    values: list[float] = []
    for row in metrics:
        step, value = _number(row.get("step")), _number(row.get(key))
        if step is not None and value is not None:
            steps.append(step)
            values.append(value)
    return steps, values


def ema_smooth(values: Sequence[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing slider).

    ``m_t = beta * m_{t-1} + (1 - beta) * x_t`` from ``m_0 = 0``, reported as ``m_t / (1 - beta**t)`` so the
    first points are not dragged towards zero.

    Args:
        values: The raw series.
        beta: Smoothing weight in [0, 1); 0 returns the values unchanged.

    Returns:
        The smoothed series, same length.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    out: list[float] = []
    m = 0.0
    for t, x in enumerate(values, start=1):
        m = beta * m + (1.0 - beta) * x
        out.append(m / (1.0 - beta**t))
    return out


def _auto_beta(n: int) -> float:
    """Smoothing that averages over roughly a tenth of the run: none for short runs, at most 0.95."""
    window = max(1.0, n / 10)
    return min(0.95, 1.0 - 1.0 / window)


def validation_scores(metrics: Sequence[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """``{"macro_f1": (steps, values), ...}`` for the validation scores a head run logs during training
    (``val_macro_f1``, ``val_accuracy``); absent scores are left out."""
    found = {name: series(metrics, f"val_{name}") for name in _SCORE_COLORS}
    return {name: series for name, series in found.items() if series[1]}


def loss_curve_png(metrics: list[dict]) -> bytes | None:
    """Training loss (raw, faint, plus EMA-smoothed) and validation loss against optimizer step; the
    validation scores of a classification head, when logged, on a second 0-1 axis.

    Args:
        metrics: Rows of metrics.jsonl; rows without ``step`` or a numeric loss are skipped.

    Returns:
        PNG bytes, or None when no row has ``train_loss`` or ``val_loss``. The lowest validation loss,
        if any, is marked and labelled with its step.
    """
    train_steps, train_loss = series(metrics, "train_loss")
    val_steps, val_loss = series(metrics, "val_loss")
    if not train_loss and not val_loss:
        return None
    fig = figure(8, 4.2)
    ax = fig.add_subplot()
    if train_loss:
        ax.plot(train_steps, train_loss, color=_TRAIN_COLOR, alpha=0.25, linewidth=1)
        smooth = ema_smooth(train_loss, _auto_beta(len(train_loss)))
        ax.plot(train_steps, smooth, color=_TRAIN_COLOR, linewidth=2, label="train loss (smoothed)")
    if val_loss:
        ax.plot(
            val_steps,
            val_loss,
            color=_VAL_COLOR,
            marker="o",
            markersize=4,
            linewidth=1.5,
            label="validation loss",
        )
        best = min(range(len(val_loss)), key=val_loss.__getitem__)
        ax.scatter(
            [val_steps[best]],
            [val_loss[best]],
            s=140,
            facecolors="none",
            edgecolors="black",
            linewidths=1.5,
            zorder=5,
            label=f"best val {val_loss[best]:.4g} @ step {val_steps[best]:g}",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    scores = validation_scores(metrics)
    if scores:
        right = ax.twinx()
        for name, (steps, values) in scores.items():
            label = f"validation {name.replace('_', '-')}"
            right.plot(
                steps,
                values,
                color=_SCORE_COLORS[name],
                marker="s",
                markersize=3,
                linestyle="--",
                label=label,
            )
        right.set_ylim(0, 1)
        right.set_ylabel("validation score")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best", fontsize=9)
    return png(fig)


def _short(label: str) -> str:
    return label if len(label) <= _MAX_TICK_CHARS else label[: _MAX_TICK_CHARS - 1] + "…"


def confusion_matrix_png(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """A confusion-matrix heat map with the count written in every cell.

    Args:
        matrix: Square counts, rows = true label, columns = predicted label, in ``labels`` order.
        labels: Class names.
        title: Shown above the plot.

    Returns:
        PNG bytes.

    Raises:
        ValueError: The matrix is not ``len(labels)`` x ``len(labels)`` or labels is empty.
    """
    k = len(labels)
    if k == 0 or len(matrix) != k or any(len(row) != k for row in matrix):
        raise ValueError(f"confusion matrix must be {k}x{k} to match labels {labels}")
    side = min(12.0, 2.5 + 0.6 * k)
    fig = figure(side, side * 0.85)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    peak = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            dark = peak > 0 and count > peak / 2  # white text on dark cells so it stays readable
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=9 if k > 8 else 11,
                color="white" if dark else "black",
            )
    ticks = list(range(k))
    short = [_short(name) for name in labels]
    tilt = k > 3 or max(len(name) for name in short) > 8  # long names would run into each other
    ax.set_xticks(ticks, short, rotation=40 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(ticks, short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return png(fig)


def comparison_bar_png(rows: dict[str, dict[str, float]], metric_names: list[str]) -> bytes:
    """Grouped bar chart: one group per metric, one bar per row (e.g. ``base`` vs ``tuned``).

    Args:
        rows: ``{"base": {"exact_match": 0.1, ...}, "tuned": {...}}``; a missing or non-numeric value
            leaves its bar out.
        metric_names: Metrics to show, in order.

    Returns:
        PNG bytes.

    Raises:
        ValueError: ``rows`` or ``metric_names`` is empty.
    """
    if not rows or not metric_names:
        raise ValueError("need at least one row and one metric to draw a comparison")
    n_rows = len(rows)
    width = 0.8 / n_rows
    fig = figure(max(5.0, 1.4 * len(metric_names) * max(1, n_rows / 2) + 1.5), 3.8)
    ax = fig.add_subplot()
    top = 0.0
    for r, (row_name, values) in enumerate(rows.items()):
        xs: list[float] = []
        heights: list[float] = []
        for m, metric in enumerate(metric_names):
            value = _number(values.get(metric))
            if value is not None:
                xs.append(m - 0.4 + width * (r + 0.5))
                heights.append(value)
        bars = ax.bar(xs, heights, width=width * 0.95, label=row_name)
        ax.bar_label(bars, labels=[f"{h:.3g}" for h in heights], fontsize=8, padding=2)
        top = max([top, *heights])
    ax.set_xticks(range(len(metric_names)), metric_names)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), top * 1.15 if top > 0 else 1.0)  # headroom for the labels
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    return png(fig)
