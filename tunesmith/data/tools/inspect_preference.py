"""``tunesmith data inspect`` for preference pairs, unpaired (KTO) rows and RL prompts.

:func:`~tunesmith.data.tools.inspect.inspect_file` hands such files here (:func:`preference_format` tells
them apart from supervised ones). One streaming pass counts rows, malformed rows (with ``file:line``),
identical pairs, desirable / undesirable completions and the fields graders could read, and renders each
example as training does (:mod:`tunesmith.data.preference`): token lengths of the prompt and of each reply,
how many exceed ``max_length``, and one example with its loss mask::

    report = inspect_preference_file("pairs.jsonl", tokenizer, max_length=512)
    report["pairs"], report["identical_pairs"], report["tokens"]["chosen"]["mean"]
    print(format_preference_inspect(report))
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunesmith.data.formats import _iter_raw, detect_format
from tunesmith.data.preference import render_preference_prompt, render_reply
from tunesmith.data.preference_formats import (
    SHAPE_OF_FORMAT,
    SHAPES,
    detect_preference_format,
    is_identical_pair,
    to_preference_example,
)
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.data.tools.token_stats import length_stats, marked_example, mask_segments, shown_lines
from tunesmith.errors import DataError

_REPLIES = {"preference": ("chosen", "rejected"), "unpaired": ("completion",), "prompt": ()}


def _row_format(row: dict[str, Any]) -> str | None:
    """The preference format of a row no supervised format takes (chat rows ending with a question count)."""
    try:
        supervised: str | None = detect_format(row)
    except DataError:
        supervised = None
    messages = row.get("messages")
    asks = isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)
    if supervised is not None and not (asks and messages[-1].get("role") in ("user", "tool")):
        return None
    try:
        return detect_preference_format(row)
    except DataError:
        return None


def preference_format(path: str | Path, fmt: str = "auto") -> str | None:
    """Whether to inspect ``path`` as preference / RL data: its format or shape, or None (supervised).

    Args:
        path: The data file.
        fmt: ``auto`` looks at the first readable row; a shape (``preference``, ``unpaired``, ``prompt``)
            or a preference format name is returned as it is; a supervised format gives None.
    """
    if fmt in SHAPES or fmt in SHAPE_OF_FORMAT:
        return fmt
    if fmt != "auto":
        return None
    try:
        for _, row in _iter_raw(path):
            if isinstance(row, dict):
                return _row_format(row)
    except DataError:  # missing or unreadable: the supervised inspection reports it as usual
        return None
    return None


class _PreferenceTally:
    """Counters and capped line lists; rows are not kept."""

    def __init__(self, max_length: int, max_listed: int) -> None:
        self.max_length, self.max_listed = max_length, max_listed
        self.problems: dict[str, list[Any]] = {}
        self.counts: Counter[str] = Counter()
        self.lengths: dict[str, Counter[int]] = {}
        self.extra_fields: Counter[str] = Counter()
        self.example: dict[str, Any] | None = None

    def note(self, problem: str, entry: Any) -> None:
        """Count ``problem`` and list ``entry`` (a line, or ``{"line", "error"}``) up to the cap."""
        self.counts[problem] += 1
        listed = self.problems.setdefault(problem, [])
        if len(listed) < self.max_listed:
            listed.append(entry)

    def listed(self, problem: str) -> list[Any]:
        return self.problems.get(problem, [])

    def length(self, name: str, value: int) -> None:
        self.lengths.setdefault(name, Counter())[value] += 1


def _sequence(tokenizer: Any, ids: list[int], labels: list[int]) -> dict[str, Any]:
    segments = mask_segments(tokenizer, ids, labels)
    trained = sum(label != IGNORE_INDEX for label in labels)
    return {
        "tokens": len(ids),
        "trained_tokens": trained,
        "segments": [{"trained": t, "text": s} for t, s in segments],
    }


def _render(tally: _PreferenceTally, ex: Any, tokenizer: Any, system_prompt: str | None) -> None:
    """Render one example as training does and count its lengths (replies without the prompt)."""
    prompt_ids = render_preference_prompt(ex, tokenizer, system_prompt)
    replies = {"chosen": ex.chosen, "rejected": ex.rejected, "completion": ex.chosen}
    rendered = {
        name: render_reply(ex, replies[name], tokenizer, system_prompt, prompt_ids)
        for name in _REPLIES[ex.kind]
    }
    fits = {name: seq for name, seq in rendered.items() if seq is not None}
    if len(fits) < len(rendered):
        tally.note("prompt_mismatch", ex.line)
        return
    n = len(prompt_ids)
    tally.length("prompt", n)
    for name, (ids, _) in fits.items():
        tally.length(name, len(ids) - n)
    # Prompts need a token of room to generate in: from max_length on they are dropped.
    if max([len(ids) for ids, _ in fits.values()], default=n + 1) > tally.max_length:
        tally.note("over_max_length", ex.line)
    if tally.example is None:
        sequences = {name: _sequence(tokenizer, *seq) for name, seq in fits.items()}
        tally.example = {
            "line": ex.line,
            "sequences": sequences or {"prompt": _sequence(tokenizer, prompt_ids, [IGNORE_INDEX] * n)},
        }


def _stream(
    path: str | Path, fmt: str, tally: _PreferenceTally, tokenizer: Any, system_prompt: str | None
) -> str | None:
    """Read every row into ``tally``; return the format found (None when no row could be read)."""
    expected = fmt if fmt in SHAPES else "auto"
    found = None if fmt in SHAPES else fmt
    try:
        for line, row in _iter_raw(path):
            tally.counts["rows"] += 1
            try:
                if isinstance(row, DataError):
                    raise row
                if found is None:
                    try:
                        found = detect_preference_format(row, expected)
                    except DataError as err:
                        raise DataError(f"{path}:{line}: {err}") from None
                ex = to_preference_example(row, found, str(path), line)
            except DataError as err:
                tally.note("malformed", {"line": line, "error": str(err)})
                continue
            if is_identical_pair(ex):
                tally.note("identical_pairs", line)
                continue
            tally.counts[f"{ex.kind}:{ex.desirable}"] += 1
            tally.extra_fields.update(list(ex.extra))  # the names; update(dict) would add values
            try:
                _render(tally, ex, tokenizer, system_prompt)
            except DataError as err:
                tally.note("render_errors", {"line": line, "error": str(err)})
    except DataError as err:  # raised, not yielded: nothing after this point can be read
        tally.problems["stopped"] = [str(err)]
    return found


def inspect_preference_file(
    path: str | Path,
    tokenizer: Any,
    *,
    max_length: int,
    fmt: str = "auto",
    system_prompt: str | None = None,
    max_listed: int = 20,
) -> dict[str, Any]:
    """Stream a preference / unpaired / prompt file once and report what training on it would see.

    Args:
        path: The data file.
        tokenizer: The model's tokenizer; examples are rendered as :mod:`tunesmith.data.preference` does.
        max_length: ``data.max_length``; longer examples are counted (truncated or dropped in training).
        fmt: ``auto``, a shape (``preference``, ``unpaired``, ``prompt``) or a preference format name.
        system_prompt: ``data.system_prompt``.
        max_listed: How many lines to list per problem.

    Returns:
        ``step``, ``input``, ``format``, ``shape``, ``kind`` (the shape), ``rows``, ``valid``, ``malformed``
        (+ ``malformed_rows``), ``stopped``, ``identical_pairs`` (+ ``identical_lines``), ``pairs``
        (preference), ``desirable`` / ``undesirable`` (unpaired), ``extra_fields`` (field -> rows having it),
        ``render_errors`` (+ rows), ``prompt_mismatch`` (+ lines: dropped in training), ``tokens``
        (``max_length``, ``over_max_length`` + lines, and length stats per ``prompt`` / ``chosen`` /
        ``rejected`` / ``completion``, replies counted without the prompt), ``example`` and ``seconds``.
    """
    start = time.perf_counter()
    tally = _PreferenceTally(max_length, max_listed)
    found = _stream(path, fmt, tally, tokenizer, system_prompt)
    shape = SHAPE_OF_FORMAT[found] if found else (fmt if fmt in SHAPES else None)
    c = tally.counts
    tokens: dict[str, Any] = {"max_length": max_length, "over_max_length": c["over_max_length"]}
    tokens["over_max_length_lines"] = tally.listed("over_max_length")
    tokens |= {name: length_stats(lengths, max_length) for name, lengths in tally.lengths.items()}
    report = {
        "step": "inspect",
        "input": str(path),
        "format": found,
        "shape": shape,
        "kind": shape,
        "rows": c["rows"],
        "valid": c["rows"] - c["malformed"] - c["identical_pairs"],
        "malformed": c["malformed"],
        "malformed_rows": tally.listed("malformed"),
        "stopped": (tally.problems.get("stopped") or [None])[0],
        "identical_pairs": c["identical_pairs"],
        "identical_lines": tally.listed("identical_pairs"),
        "extra_fields": dict(tally.extra_fields.most_common()),
        "render_errors": c["render_errors"],
        "render_error_rows": tally.listed("render_errors"),
        "prompt_mismatch": c["prompt_mismatch"],
        "prompt_mismatch_lines": tally.listed("prompt_mismatch"),
        "tokens": tokens,
        "example": tally.example,
    }
    if shape == "preference":
        report["pairs"] = c["preference:None"]
    if shape == "unpaired":
        report |= {"desirable": c["unpaired:True"], "undesirable": c["unpaired:False"]}
    return report | {"seconds": round(time.perf_counter() - start, 3)}


# -------------------------------------------------------------------------------------------------- text


def _problem_lines(report: dict[str, Any]) -> list[str]:
    out = [f"  rows: {report['rows']} (valid {report['valid']}, malformed {report['malformed']})"]
    if report["stopped"]:
        out.append(f"  reading stopped early: {report['stopped']}")
    if report["malformed"]:
        out.append(f"  malformed rows ({report['malformed']}):")
        out += [f"    {r['error']}" for r in report["malformed_rows"]]
    for key, lines, what in (
        ("identical_pairs", "identical_lines", "identical pairs (dropped by training)"),
        (
            "prompt_mismatch",
            "prompt_mismatch_lines",
            "prompt tokens merge into the reply (dropped by training)",
        ),
    ):
        if report[key]:
            out.append(f"  {what}: {report[key]} (lines {shown_lines(report[lines], report[key])})")
    if report["render_errors"]:
        out.append(f"  rows the chat template cannot render ({report['render_errors']}):")
        out += [f"    {r['error']}" for r in report["render_error_rows"][:5]]
    return out


def format_preference_inspect(report: dict[str, Any], color: bool = False) -> str:
    """The report of :func:`inspect_preference_file` as text for a terminal (``color``: ANSI green)."""
    out = [f"{report['input']}: {report['format'] or 'unknown'} format ({report['shape'] or 'unknown'} rows)"]
    out += _problem_lines(report)
    if "pairs" in report:
        out.append(f"  pairs: {report['pairs']}")
    if "desirable" in report:
        out.append(f"  completions: {report['desirable']} desirable, {report['undesirable']} undesirable")
    if report["extra_fields"]:
        fields = ", ".join(f"{k} ({v} rows)" for k, v in report["extra_fields"].items())
        out.append(f"  other fields (graders read them as item.<field>): {fields}")
    tokens = report["tokens"]
    for name in ("prompt", *_REPLIES.get(report["shape"] or "", ())):
        if (stats := tokens.get(name)) and stats["examples"]:
            out.append(
                f"  {name} tokens: min {stats['min']}, mean {stats['mean']}, p50 {stats['p50']}, "
                f"p90 {stats['p90']}, max {stats['max']}"
            )
    over = tokens["over_max_length"]
    line = f"  over max_length {tokens['max_length']}: {over}"
    out.append(line + (f" (lines {shown_lines(tokens['over_max_length_lines'], over)})" if over else ""))
    if (example := report["example"]) is not None:
        out.append(f"  example (line {example['line']}; {'green' if color else '[[...]]'} = in the loss):")
        for name, seq in example["sequences"].items():
            out.append(f"  --- {name} ({seq['tokens']} tokens, {seq['trained_tokens']} trained)")
            out.append(marked_example(seq, color))
    return "\n".join(out)


def preference_summary(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` rows summarising a preference inspect report (the HTML page's table)."""
    rows = [(k, report[k]) for k in ("format", "shape", "rows", "valid", "malformed", "identical_pairs")]
    rows += [(k, report[k]) for k in ("pairs", "desirable", "undesirable") if k in report]
    rows.append(("prompt_mismatch", report["prompt_mismatch"]))
    tokens = report["tokens"]
    for name in ("prompt", "chosen", "rejected", "completion"):
        if (stats := tokens.get(name)) and stats["examples"]:
            rows.append((f"{name} tokens (mean / max)", f"{stats['mean']} / {stats['max']}"))
    rows.append((f"over max_length {tokens['max_length']}", tokens["over_max_length"]))
    return rows
