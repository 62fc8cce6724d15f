"""The demo's runner: its config equals the shipped recipe, the verdict follows the targets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tunesmith import cli
from tunesmith.config import load_config
from tunesmith.demo.run import (
    TARGETS,
    demo_config,
    general_verdict,
    print_table,
    retained_share,
    verdict,
    wilson_interval,
)

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


def test_seed_and_precision_reach_the_config():
    cfg = demo_config(Path("runs/demo"), Path("runs/demo/data"), quick=False, seed=2, precision="fp32")
    assert cfg.seed == 2 and cfg.train.precision == "fp32"


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


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Reference values of the Wilson score interval (z = 1.959964).
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
        (105, 110, 0.8981, 0.9800),
    ],
)
def test_wilson_interval(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_wilson_interval_narrows_with_more_questions():
    small, large = wilson_interval(12, 13), wilson_interval(120, 130)
    assert large[1] - large[0] < (small[1] - small[0]) / 2


def _paired(n_right: int, lost: int, n_wrong: int = 10, gained: int = 0) -> tuple[list[bool], list[bool]]:
    base = [True] * n_right + [False] * n_wrong
    tuned = [False] * lost + [True] * (n_right - lost) + [True] * gained + [False] * (n_wrong - gained)
    return base, tuned


def test_a_clearly_fine_model_passes():
    base, tuned = _paired(120, lost=3)  # 97.5 % kept
    result = general_verdict(base, tuned)
    assert result["passed"] and result["kept"] == 117 and result["base_right"] == 120
    assert result["interval"][0] >= TARGETS["general_retained_lower_min"]


@pytest.mark.parametrize("lost", [60, 120])  # 50 %, 0 % kept
def test_a_clearly_forgetting_model_fails(lost):
    assert not general_verdict(*_paired(120, lost=lost))["passed"]


def test_a_model_that_keeps_three_quarters_clears_the_floor_but_not_the_goal():
    base, tuned = _paired(120, lost=30)  # 75 % kept: lower bound ~67 %
    assert general_verdict(base, tuned)["passed"]
    assert not general_verdict(base, tuned, lower_min=TARGETS["general_retained_goal"])["passed"]


def test_gained_answers_do_not_pay_for_lost_ones():
    assert not general_verdict(*_paired(120, lost=60, gained=10))["passed"]


def test_a_perfect_score_on_too_few_questions_is_not_enough():
    # 5 of 5 kept still leaves a 95 % lower bound of 57 %: the sample cannot show 60 % retention (and 13 of
    # 13, 77 %, could not show the 85 % goal).
    assert not general_verdict(*_paired(5, lost=0))["passed"]
    assert not general_verdict(*_paired(13, lost=0), lower_min=TARGETS["general_retained_goal"])["passed"]
    assert not general_verdict([False] * 5, [True] * 5)["passed"]  # nothing the base knew: no evidence


def _result(tuned: float, lost: int, total_s: float = 720.0) -> dict:
    base, tuned_general = _paired(120, lost=lost)
    result = {
        "store_accuracy": {"base": 0.0, "tuned": tuned},
        "general_accuracy": {"base": 120 / 130, "tuned": (120 - lost) / 130},
        "general_perplexity": {"base": 10.0, "tuned": 11.0},
        "general_retained": (120 - lost) / 120,
        "general_verdict": general_verdict(base, tuned_general),
        "general_questions": 130,
        "heldout_questions": 240,
        "seed": 0,
        "precision": "fp32",
        "tokens_per_s": 250.0,
        "train_s": 500.0,
        "total_s": total_s,
    }
    result["passed"] = verdict(result)
    return result


def test_verdict_needs_every_target():
    assert verdict(_result(0.95, lost=2))
    assert not verdict(_result(TARGETS["tuned_min"] - 0.01, lost=2))
    assert not verdict(_result(0.95, lost=60))


def test_table_says_pass_the_interval_and_the_minutes(capsys):
    print_table(_result(0.95, lost=2), quick=False)
    out = capsys.readouterr().out
    assert "95.0%" in out and "demo total 12.0 min" in out and "118 of 120" in out
    assert "95% interval" in out and "not part of PASS" in out and "within the 15-minute budget" in out
    assert _line(out, "targets:").endswith("PASS") and _line(out, "goal:").endswith(": met")


def test_table_says_whether_the_store_goal_was_met(capsys):
    for tuned, word in ((TARGETS["tuned_goal"], ": met"), (TARGETS["tuned_goal"] - 0.01, ": NOT met")):
        print_table(_result(tuned, lost=2), quick=False)
        out = capsys.readouterr().out
        assert _line(out, "goal: store").endswith(word) and _line(out, "targets:").endswith("PASS")


def _line(out: str, start: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(start))


def test_table_says_fail_when_general_knowledge_is_lost(capsys):
    print_table(_result(0.95, lost=60), quick=False)
    out = capsys.readouterr().out
    assert _line(out, "targets:").endswith("FAIL") and "NOT met" in _line(out, "goal:")


def test_table_flags_a_run_over_the_time_budget(capsys):
    print_table(_result(0.95, lost=2, total_s=16 * 60), quick=False)
    out = capsys.readouterr().out
    assert "OVER the 15-minute budget" in out and _line(out, "targets:").endswith("PASS")


def _cli_demo(monkeypatch, result: dict, quick: bool = False) -> int:
    import tunesmith.demo.run as demo_run

    seen = {}

    def fake_run_demo(**kwargs):
        seen.update(kwargs)
        return result

    monkeypatch.setattr(demo_run, "run_demo", fake_run_demo)
    code = cli.main(["demo", "--seed", "3", "--precision", "fp32", *(["--quick"] if quick else [])])
    assert seen["seed"] == 3 and seen["precision"] == "fp32"
    return code


def test_cli_exit_codes_follow_the_verdict(monkeypatch):
    assert _cli_demo(monkeypatch, {"passed": True}) == 0
    assert _cli_demo(monkeypatch, {"passed": False}) == 1
    assert _cli_demo(monkeypatch, {}, quick=True) == 0  # a smoke run has no verdict


@pytest.mark.parametrize("result", [{}, {"passed": None}, {"passed": "yes"}])
def test_cli_treats_a_missing_verdict_as_an_error(monkeypatch, capsys, result):
    assert _cli_demo(monkeypatch, result) == 2
    assert "no pass/fail verdict" in capsys.readouterr().err


def test_cli_demo_options_default_to_make_demo():
    args = cli.build_parser().parse_args(["demo"])
    assert isinstance(args, argparse.Namespace)
    assert (args.seed, args.precision, args.quick) == (0, "auto", False)
