"""Synthetic task data the project generates itself (no download): short arithmetic word problems with a
numeric answer, the reinforcement-learning task of ``recipes/grpo.yaml``.

    tunesmith data synth arithmetic --n 400 --seed 0 --out data/arith-train.jsonl

Rows are RL prompt rows: ``{"messages": [{"role": "user", "content": ...}], "answer": "12"}``; a grader
reads ``{{item.answer}}``. Questions mix a handful of stories with addition, subtraction and multiplication
of small numbers: easy enough that a 135M chat model gets some right (so there is something to reinforce),
hard enough that it gets most wrong.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tunesmith.io import write_jsonl_atomic

STORIES = (
    ("{name} has {a} apples and buys {b} more.", "How many apples does {name} have now?", "+"),
    ("{name} has {a} marbles and gives {b} away.", "How many marbles does {name} have left?", "-"),
    ("A box holds {a} pencils. {name} adds {b} pencils.", "How many pencils are in the box?", "+"),
    ("{name} reads {a} pages a day for {b} days.", "How many pages does {name} read?", "*"),
    ("There are {a} birds on a tree and {b} fly away.", "How many birds are left?", "-"),
    ("{name} buys {b} bags with {a} sweets each.", "How many sweets does {name} have?", "*"),
)
NAMES = ("Sam", "Lena", "Omar", "Mia", "Kenji", "Ana", "Tom", "Priya")
INSTRUCTION = "Answer with the number only."


def arithmetic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` word problems, reproducible from ``seed``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        setup, question, op = rng.choice(STORIES)
        a = rng.randint(2, 12) if op == "*" else rng.randint(5, 40)
        b = rng.randint(2, {"*": 9, "-": a - 1, "+": 30}[op])
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        name = rng.choice(NAMES)
        text = f"{setup} {question} {INSTRUCTION}".format(name=name, a=a, b=b)
        rows.append({"messages": [{"role": "user", "content": text}], "answer": str(answer)})
    return rows


TASKS = {"arithmetic": arithmetic_rows}


def write_task(task: str, n: int, seed: int, out: str | Path) -> Path:
    write_jsonl_atomic(out, TASKS[task](n, seed))
    return Path(out)
