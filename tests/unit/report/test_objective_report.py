"""The preference / RL report section: curves only where those metrics were logged, graded samples escaped."""

from __future__ import annotations

import json

from tunesmith.report.html import render_report
from tunesmith.report.objective import objective_curves_png, objective_section

PNG = b"\x89PNG"


def test_curves_only_for_objective_metrics():
    sft = [{"step": s, "train_loss": 1.0, "step_s": 0.5} for s in range(1, 4)]
    assert objective_curves_png(sft) is None
    dpo = [
        {"step": s, "train_loss": 0.6, "reward_accuracy": 0.5 + s / 10, "reward_margin": s} for s in (1, 2, 3)
    ]
    assert objective_curves_png(dpo).startswith(PNG)


def test_section_shows_graded_answers_escaped(tmp_path):
    for which, text, score in (("base", "<b>12</b>", 0.0), ("tuned", "The answer is 13", 1.0)):
        rows = [{"completion": text, "score": score}]
        (tmp_path / f"predictions_{which}_validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    html = objective_section([{"step": 1, "reward": 0.25, "generate_s": 1.0, "step_s": 2.0}], tmp_path)
    assert "Preference / RL" in html and "&lt;b&gt;12&lt;/b&gt;" in html and "The answer is 13" in html
    assert "<b>12</b>" not in html
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.25, "step_s": 2.0}) + "\n")
    assert "Graded answers" in render_report(tmp_path)
