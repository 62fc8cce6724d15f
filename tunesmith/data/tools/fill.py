"""The ``data clean --missing fill`` rules: what a missing field becomes, by field kind (table in
:mod:`tunesmith.data.tools.clean`).

    fills, rules = column_fills(rows)          # metadata columns: median / most common / [] / {}
    row, reasons = fill_row(row, "instruction", fills)
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tunesmith.data.tools.textfields import CHAT_KEY, TEXT_KEYS

NOT_METADATA = frozenset({*TEXT_KEYS, CHAT_KEY, "label"})
PROMPT_FIELDS = {"instruction": ("instruction", "input"), "prompt_completion": ("prompt",)}
"""Prompt-side text per format: missing means "nothing said", filled with ""."""


def _absent(value: Any) -> bool:
    return value is None or value == ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _column_rule(values: list[Any]) -> tuple[Any, str] | None:
    """(fill, rule in words) for one metadata column's present values; None: not filled."""
    if all(isinstance(v, list) for v in values):
        return [], "empty list"
    if all(isinstance(v, dict) for v in values):
        return {}, "empty object"
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        # median_low: an actual value of the column, so an integer column stays integer (and "3" stays "3").
        middle = statistics.median_low(numbers)
        fill = values[numbers.index(middle)]
        return fill, f"median {fill!r}"
    if all(isinstance(v, str) for v in values) and len(set(values)) == len(values) and len(values) > 1:
        return None  # every value different: an id or free text, no value stands for the others
    if all(isinstance(v, str | bool) for v in values):
        fill = Counter(values).most_common(1)[0][0]  # Counter keeps first-seen order on ties
        return fill, f"most common {fill!r}"
    return None


def column_fills(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill values of the metadata columns (every key but the text, messages and label) and the rule that
    chose each, for the report; columns that are never missing get none."""
    values: dict[str, list[Any]] = {}
    seen_missing: set[str] = set()
    n = 0
    for row in rows:
        n += 1
        for key, value in row.items():
            if key in NOT_METADATA:
                continue
            if _absent(value):
                seen_missing.add(key)
            else:
                values.setdefault(key, []).append(value)
    fills: dict[str, Any] = {}
    rules: dict[str, str] = {}
    for key, present in values.items():
        if key not in seen_missing and len(present) == n:
            continue
        rule = _column_rule(present)
        if rule is None:
            rules[key] = "not filled (every value differs: an id or free text)"
        else:
            fills[key], rules[key] = rule
    return fills, rules


def _fill_turns(messages: list[Any]) -> tuple[list[Any], bool]:
    """Chat turns before the last with null content get ""; the last turn is the answer and is left alone."""
    out, changed = [], False
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        # A tool-calling turn says nothing by design: its null content stays.
        if (
            isinstance(message, dict)
            and not last
            and message.get("content") is None
            and not message.get("tool_calls")
        ):
            message, changed = {**message, "content": ""}, True
        out.append(message)
    return out, changed


def fill_row(row: dict[str, Any], fmt: str, fills: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``row`` with its missing prompt fields and metadata filled; ``["filled_field"]`` when anything was.

    The caller has already dropped rows whose answer or label is missing.
    """
    new = dict(row)
    for key in PROMPT_FIELDS.get(fmt, ()):
        if new.get(key) is None:
            new[key] = ""
    if fmt == "chat" and isinstance(new.get(CHAT_KEY), list):
        new[CHAT_KEY], _ = _fill_turns(new[CHAT_KEY])
    for key, value in fills.items():
        if _absent(new.get(key)):
            new[key] = value
    return new, (["filled_field"] if new != row else [])
