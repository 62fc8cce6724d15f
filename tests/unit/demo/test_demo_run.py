"""The demo's runner: its config equals the shipped recipe, the verdict follows the targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.demo.run import TARGETS, demo_config, print_table, retained_share

ROOT = Path(__file__).resolve().parents[3]


def test_recipe_equals_the_demo_config():
    recipe = load_config(ROOT / "recipes" / "demo.yaml")
    built = demo_config(Path("runs/demo"), Path("runs/demo/data"), quick=False)
    assert recipe.model_dump() == built.model_dump()


def test_quick_config_only_shortens_the_run():
    quick = demo_config(Path("runs/demo"), Path("runs/demo/data"), quick=True)
    full = demo_config(Path("runs/demo"), Path("runs/demo/data"), quick=False)
    assert quick.train.max_steps == 2 and quick.eval.max_examples == 8
    assert quick.method == full.method and quick.data == full.data


@pytest.mark.parametrize(
    ("base", "tuned", "expected"),
    [
        ([True, True, False, True], [True, False, True, True], 2 / 3),  # the gained answer does not count
        ([True, True], [True, True], 1.0),
        ([False, False], [True, False], 1.0),  # nothing to retain
    ],
)
def test_retained_share(base, tuned, expected):
    assert retained_share(base, tuned) == pytest.approx(expected)


def _result(tuned: float, retained: float) -> dict:
    return {
        "store_accuracy": {"base": 0.0, "tuned": tuned},
        "general_accuracy": {"base": 1.0, "tuned": retained},
        "general_perplexity": {"base": 10.0, "tuned": 11.0},
        "general_retained": retained,
        "heldout_questions": 240,
        "train_s": 500.0,
        "total_s": 720.0,
        "passed": tuned >= TARGETS["tuned_min"] and retained >= TARGETS["general_retained_min"],
    }


def test_table_says_pass_and_the_minutes(capsys):
    print_table(_result(0.9, 1.0), quick=False)
    out = capsys.readouterr().out
    assert "90.0%" in out and "demo total 12.0 min" in out and out.rstrip().endswith("PASS")


def test_table_says_fail_when_general_knowledge_is_lost(capsys):
    print_table(_result(0.9, 0.8), quick=False)
    assert capsys.readouterr().out.rstrip().endswith("FAIL")
