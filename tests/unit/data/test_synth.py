"""``tunesmith data synth arithmetic``: reproducible word problems whose answers are right."""

from __future__ import annotations

import json
import re

from tunesmith.data.tools.cli import main
from tunesmith.data.tools.synth import arithmetic_rows


def _solve(question: str) -> int:
    a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
    if "gives" in question or "fly away" in question:
        return a - b
    if "a day for" in question:
        return a * b
    if "bags with" in question:
        return a * b
    return a + b


def test_answers_are_correct_and_seeded():
    rows = arithmetic_rows(300, seed=3)
    assert rows == arithmetic_rows(300, seed=3) and rows != arithmetic_rows(300, seed=4)
    for row in rows:
        question = row["messages"][0]["content"]
        assert row["answer"] == str(_solve(question)) and int(row["answer"]) > 0
        assert question.endswith("Answer with the number only.")


def test_cli_writes_prompt_rows(tmp_path, capsys):
    out = tmp_path / "arith.jsonl"
    assert main(["synth", "arithmetic", "--n", "5", "--seed", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == arithmetic_rows(5, 0) and "wrote 5 arithmetic rows" in capsys.readouterr().out
