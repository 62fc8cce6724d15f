"""Report sections for multi-task and sequential runs: the per-task table and the forgetting matrix.

Both read summary.json only (``tasks``, ``stages``, ``forgetting_matrix``, written by
tunesmith/pipelines/staged.py); the heatmap is a PNG drawn headless like every other plot (report/plots.py)::

    html = tasks_section(summary) + forgetting_matrix_section(summary)
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

import numpy as np

from tunesmith.report.plots import figure, png

_MAX_LABEL_CHARS = 16


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _num(value: Any) -> str:
    return f'<td class="num">{_fmt(value)}</td>'


def tasks_section(summary: dict[str, Any]) -> str:
    """Per task and split: the main metric for base and tuned and the change."""
    tasks = summary.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return ""
    rows = [
        [
            f"<th>{esc(r.get('task'))}</th>",
            f"<td>{esc(r.get('split'))}</td>",
            f"<td>{esc(r.get('metric'))}</td>",
            _num(r.get("base")),
            _num(r.get("tuned")),
            _num(r.get("delta")),
            _num(r.get("n")),
        ]
        for r in tasks.values()
        if isinstance(r, dict)
    ]
    headers = ["task", "split", "metric", "base", "tuned", "Δ tuned − base", "n"]
    body = table(headers, rows)
    mixing = summary.get("mixing")
    if isinstance(mixing, dict) and mixing:
        mix_rows = [
            [f"<th>{esc(name)}</th>", _num(m.get("rows")), _num(m.get("share")), _num(m.get("drawn"))]
            for name, m in mixing.items()
            if isinstance(m, dict)
        ]
        body += "<h3>Training mix</h3>" + table(["task", "rows", "share", "drawn"], mix_rows)
    return f"<section><h2>Per-task evaluation</h2>{body}</section>"


def heatmap_png(values: list[list[float | None]], rows: list[str], columns: list[str], title: str) -> bytes:
    """Rows x columns heatmap, each cell annotated; empty (None) cells are left blank."""
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    fig = figure(1.6 + 1.1 * len(columns), 1.2 + 0.55 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(columns)), [c[:_MAX_LABEL_CHARS] for c in columns], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r[:_MAX_LABEL_CHARS] for r in rows])
    ax.set_xlabel("evaluation set")
    ax.set_ylabel("after stage")
    ax.set_title(title)
    finite = data[np.isfinite(data)]
    middle = float(finite.mean()) if finite.size else 0.0
    for i, row in enumerate(data):
        for j, value in enumerate(row):
            if np.isfinite(value):
                color = "black" if value > middle else "white"
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=color, fontsize=8)
    return png(fig)


def forgetting_matrix_section(summary: dict[str, Any]) -> str:
    """The stage x eval-set matrix as a table (base row first) and a heatmap, plus per-stage facts."""
    matrix = summary.get("forgetting_matrix")
    if not isinstance(matrix, dict) or not matrix.get("values"):
        return ""
    columns, values = list(matrix.get("columns", [])), matrix["values"]
    metrics = matrix.get("metric", {})
    headers = ["after stage", *(f"{c} ({metrics.get(c, '')})" for c in columns)]
    rows = [
        [f"<th>{esc(r)}</th>", *(_num(v) for v in vals)]
        for r, vals in zip(matrix["rows"], values, strict=False)
    ]
    if matrix.get("base"):
        rows.insert(0, ["<th>base</th>", *(_num(v) for v in matrix["base"])])
    forgetting = matrix.get("forgetting") or {}
    rows.append(["<th>forgetting (best − final)</th>", *(_num(forgetting.get(c)) for c in columns)])
    body = table(headers, rows)
    body += img(heatmap_png(values, list(matrix["rows"]), columns, "main metric"), "forgetting matrix")
    stages = summary.get("stages")
    if isinstance(stages, list) and stages:
        keys = ["name", "steps", "train_rows", "replay_rows", "train_seconds", "final_val_loss"]
        stage_rows = [
            [f"<th>{esc(s.get('name'))}</th>", *(_num(s.get(k)) for k in keys[1:])]
            for s in stages
            if isinstance(s, dict)
        ]
        body += "<h3>Stages</h3>" + table(["stage", *keys[1:]], stage_rows)
    return f"<section><h2>Sequential training: forgetting matrix</h2>{body}</section>"
