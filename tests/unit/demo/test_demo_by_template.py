"""bench/demo_by_template.py: per-template scoring of a demo run on a hand-made run directory."""

from __future__ import annotations

import json
from pathlib import Path

from bench.demo_by_template import score_by_template


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_hits_are_grouped_by_template_name_position_and_miss_kind(tmp_path):
    facts = [
        {"product": "Velmora vest", "attribute": "price", "value": "$74.15"},
        {"product": "Quorrin hat", "attribute": "price", "value": "$19.25"},
    ]
    questions = [
        ("Velmora vest: how much?", "Velmora vest", "$74.15", "It costs $19.25."),  # other product's value
        ("How much is the Quorrin hat?", "Quorrin hat", "$19.25", "It costs $19.25."),
        ("Quorrin hat: how much?", "Quorrin hat", "$19.25", "It costs $5.00."),  # no catalogue value
    ]
    _write(tmp_path / "data" / "facts.jsonl", facts)
    _write(
        tmp_path / "data" / "validation.jsonl",
        [
            {"messages": [{"role": "user", "content": q}], "product": p, "attribute": "price", "value": v}
            for q, p, v, _ in questions
        ],
    )
    _write(tmp_path / "predictions_tuned_validation.jsonl", [{"prediction": a} for *_, a in questions])
    groups, misses = score_by_template(tmp_path)
    by_template = {"{product}: how much?": [False, False], "How much is the {product}?": [True]}
    assert groups["template"] == by_template
    assert groups["opens_with_name"] == {"yes": [False, False], "no": [True]}
    assert groups["attribute"] == {"price": [False, True, False]}
    assert misses == {"another product's value": 1, "no catalogue value": 1}
