"""The sweep report's plots (headless PNG bytes, as the run report's: :mod:`tunesmith.report.plots`)."""

from __future__ import annotations

import math
from typing import Any

from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from tunesmith.report.plots import figure, png

_POINT, _BEST, _PRUNED = "#1f77b4", "#d62728", "#b0b7c3"


def history_png(points: list[tuple[int, float]], pruned: list[int], name: str, maximize: bool) -> bytes:
    """Objective by trial number, with the best-so-far line; pruned trials as grey ticks on the axis."""
    fig = figure(7, 3.6)
    ax = fig.add_subplot()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.scatter(xs, ys, color=_POINT, label="trial", zorder=3)
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if maximize else min(running, y))
        best.append(running)
    ax.step(xs, best, where="post", color=_BEST, label="best so far")
    if pruned:
        ax.scatter(
            pruned, [min(ys, default=0)] * len(pruned), marker="|", s=200, color=_PRUNED, label="pruned"
        )
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not 0.25 steps
    ax.set_ylabel(name)
    ax.set_title("Optimisation history")
    ax.legend(loc="best", fontsize=8)
    return png(fig)


def importance_png(importances: dict[str, float]) -> bytes:
    """Horizontal bars, most important parameter on top."""
    names = list(importances)[::-1]
    fig = figure(7, 0.5 + 0.45 * len(names))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=_POINT)
    ax.set_xlabel("importance (share of the objective's variance, fANOVA)")
    ax.set_title("Parameter importances")
    return png(fig)


def _axis(values: list[Any], log: bool) -> tuple[list[float], list[str]]:
    """Values mapped to [0, 1] for one parallel axis, with tick labels for its ends (or its categories)."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        nums = [math.log10(v) if log else float(v) for v in values]
        low, high = min(nums), max(nums)
        span = (high - low) or 1.0
        return [(n - low) / span for n in nums], [f"{min(values):.3g}", f"{max(values):.3g}"]
    cats = list(dict.fromkeys(str(v) for v in values))
    step = 1 / max(1, len(cats) - 1)
    return [cats.index(str(v)) * step for v in values], cats


def parallel_png(columns: dict[str, list[Any]], logs: set[str], objective: str, maximize: bool) -> bytes:
    """One line per finished trial across the axes in ``columns`` (the parameters, then ``objective``),
    each axis scaled to its own range; darker lines are better trials."""
    axes = {name: _axis(values, name in logs) for name, values in columns.items()}
    n_trials = len(columns[objective])
    ranks = sorted(range(n_trials), key=lambda i: columns[objective][i], reverse=maximize)
    fig = figure(8, 3.8)
    ax = fig.add_subplot()
    shades = colormaps["Blues_r"]
    for order, i in enumerate(ranks):
        color = shades(0.1 + 0.7 * order / max(1, n_trials - 1))
        ax.plot(range(len(axes)), [scaled[i] for scaled, _ in axes.values()], color=color, alpha=0.8)
    ax.set_xticks(range(len(axes)), [n.replace(".", ".\n", 1) for n in axes], fontsize=8)
    ax.set_yticks([])
    for x, (_, ticks) in enumerate(axes.values()):
        for k, tick in enumerate(ticks):  # range ends, or every category in order
            ax.annotate(tick, (x, k / max(1, len(ticks) - 1)), fontsize=7, ha="left", va="center")
    ax.set_title("Parallel coordinates (darker = better)")
    return png(fig)


def pareto_png(
    points: list[tuple[float, float]], front: list[tuple[float, float]], names: list[str]
) -> bytes:
    """Two objectives, every finished trial, the Pareto front highlighted."""
    fig = figure(6, 4)
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], color=_PRUNED, label="trial")
    ax.scatter([p[0] for p in front], [p[1] for p in front], color=_BEST, label="Pareto front", zorder=3)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("Pareto front")
    ax.legend(loc="best", fontsize=8)
    return png(fig)
