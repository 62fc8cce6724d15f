"""Token-length statistics and loss-mask display shared by the data inspection reports.

stats = length_stats(Counter(lengths), max_length)   # min, mean, p50, p90, p99, max, histogram
marked_example({"segments": [{"trained": t, "text": s} for t, s in mask_segments(tok, ids, labels)]})
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from tunesmith.data.render import IGNORE_INDEX

_HIST_BINS = 16
_GREEN, _RESET = "\x1b[1;32m", "\x1b[0m"


def _nice_width(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that is at least ``x``."""
    if x <= 1:
        return 1
    exp = 10 ** math.floor(math.log10(x))
    return next(m * exp for m in (1, 2, 5, 10) if m * exp >= x)


def length_histogram(lengths: Counter[int], max_length: int, bins: int = _HIST_BINS) -> dict[str, Any]:
    """Fixed-width bins ``[edges[i], edges[i+1])`` over token lengths, wide enough to show ``max_length``.

    Args:
        lengths: Number of examples per token length.
        max_length: The token budget; the bins always reach past it.
        bins: About how many bins (the width is rounded to 1, 2 or 5 times a power of ten).

    Returns:
        ``{"bin_width", "edges", "counts"}``.
    """
    top = max([max_length, *lengths])
    width = _nice_width(top / bins)
    counts = [0] * (top // width + 1)
    for length, count in lengths.items():
        counts[length // width] += count
    return {"bin_width": width, "edges": [i * width for i in range(len(counts) + 1)], "counts": counts}


def _percentile(lengths: Counter[int], q: float) -> int:
    """Nearest-rank percentile: the smallest length with at least ``q`` of the examples at or below it."""
    rank = max(1, math.ceil(q * lengths.total()))
    seen = 0
    for length in sorted(lengths):
        seen += lengths[length]
        if seen >= rank:
            return length
    raise ValueError("empty length counter")


def length_stats(lengths: Counter[int], max_length: int) -> dict[str, Any]:
    """Count, total, min, mean, nearest-rank p50/p90/p99, max and the histogram of token lengths."""
    if not lengths:
        return {"max_length": max_length, "examples": 0}
    total = sum(length * count for length, count in lengths.items())
    return {
        "max_length": max_length,
        "examples": lengths.total(),
        "total": total,
        "min": min(lengths),
        "mean": round(total / lengths.total(), 2),
        "p50": _percentile(lengths, 0.5),
        "p90": _percentile(lengths, 0.9),
        "p99": _percentile(lengths, 0.99),
        "max": max(lengths),
        "histogram": length_histogram(lengths, max_length),
    }


def mask_segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[tuple[bool, str]]:
    """Decode ``ids`` as ``(trained, text)`` runs: consecutive tokens that are all in the loss or all out."""
    segments: list[tuple[bool, str]] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(ids[start:k], skip_special_tokens=False)
            segments.append((labels[start] != IGNORE_INDEX, text))
            start = k
    return segments


def shown_lines(values: list[int], total: int, show: int = 10) -> str:
    """Up to ``show`` line numbers, and how many more of ``total`` there are."""
    shown = ", ".join(map(str, values[:show]))
    return shown + (f", ... ({total - len(values[:show])} more)" if total > show else "")


def marked_example(example: dict[str, Any], color: bool = False) -> str:
    """The example's text with trained spans wrapped in ``[[...]]`` (or green when ``color``)."""
    parts = []
    for seg in example["segments"]:
        if not seg["trained"]:
            parts.append(seg["text"])
        else:
            parts.append(f"{_GREEN}{seg['text']}{_RESET}" if color else f"[[{seg['text']}]]")
    return "".join(parts)
