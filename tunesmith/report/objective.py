"""Report sections for preference and RL runs: reward / accuracy / margin curves, GRPO's time split between
generating, grading and the rest of the step, and graded sample answers base vs tuned.

Reads metrics.jsonl rows (keys logged by tunesmith/train/preference.py and tunesmith/train/grpo.py) and the
``predictions_{base,tuned}_<split>.jsonl`` files; a run without them gets no section::

    html = objective_section(metrics, run_dir)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.report.plots import figure, png, series
from tunesmith.report.tasks import esc, img, table

PANELS = (
    (
        "share",
        ("reward_accuracy", "val_reward_accuracy", "val_pair_accuracy", "val_prefers_chosen", "reward"),
    ),
    ("margin", ("reward_margin", "val_reward_margin", "val_margin")),
    ("seconds per step", ("step_s", "generate_s", "grade_s")),
)
"""(y axis, the metrics.jsonl keys drawn on it); GRPO's ``reward`` is its mean grader score."""
SAMPLES = 5


def objective_curves_png(metrics: list[dict[str, Any]]) -> bytes | None:
    """One panel per :data:`PANELS` entry that has data; None when none has (an SFT run)."""
    panels = [
        (label, [(key, series(metrics, key)) for key in keys if series(metrics, key)[1]])
        for label, keys in PANELS
    ]
    panels = [(label, lines) for label, lines in panels if lines]
    if not any(label != "seconds per step" for label, _ in panels):
        return None  # step_s alone is every run's; nothing objective-specific to draw
    fig = figure(8, 2.8 * len(panels))
    for i, (label, lines) in enumerate(panels, 1):
        ax = fig.add_subplot(len(panels), 1, i)
        for key, (steps, values) in lines:
            ax.plot(steps, values, marker="o" if key.startswith("val_") else None, markersize=3, label=key)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.axes[-1].set_xlabel("optimizer step")
    return png(fig)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _answer_cells(row: dict[str, Any]) -> str:
    return f"<td>{esc(row.get('completion', ''))}</td><td class='num'>{esc(row.get('score', ''))}</td>"


def samples_table(run_dir: Path, split: str = "validation") -> str:
    """The first :data:`SAMPLES` answers of base and tuned side by side, with their grader scores."""
    base = _read_rows(run_dir / f"predictions_base_{split}.jsonl")
    tuned = _read_rows(run_dir / f"predictions_tuned_{split}.jsonl")
    if not tuned or "score" not in tuned[0]:
        return ""
    rows = []
    for i, after in enumerate(tuned[:SAMPLES]):
        before = base[i] if i < len(base) else {}
        rows.append([_answer_cells(before), _answer_cells(after)])
    return table(["base answer", "score", "tuned answer", "score"], rows)


def objective_section(metrics: list[dict[str, Any]], run_dir: Path) -> str:
    curves = objective_curves_png(metrics)
    samples = samples_table(run_dir)
    if curves is None and not samples:
        return ""
    body = img(curves, "rewards, accuracies, margins and step time by step") if curves else ""
    if samples:
        body += "<h3>Graded answers (validation, first prompts)</h3>" + samples
    return f"<section><h2>Preference / RL</h2>{body}</section>"
