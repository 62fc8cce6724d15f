"""Mixing several datasets into one training set: task prefixes, sampling quotas, seeded draws, replay.

Multi-task runs (``data.tasks``) and sequential runs (``stages[].replay``) build their training rows here;
everything is deterministic given the seed, and counts are exact rather than multinomial draws, so a
configured 60/40 mix holds exactly 60 % and 40 % of the rows (up to rounding of one row)::

    probs = mixing_probabilities([900, 100], [1, 1], "temperature", 2.0)   # [0.75, 0.25]
    counts = quota_counts(probs, 1000)                                       # [750, 250]
    rows = draw_rows(100, 250, random.Random(0))                             # each row 2-3 times
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from tunesmith.data.formats import Example


def with_prefix(ex: Example, prefix: str) -> Example:
    """A copy of ``ex`` whose input starts with ``prefix`` (the input example is not modified).

    The input is the first user turn of a chat (instruction and prompt/completion rows are chats), the text
    of a classification row (inside ``data.label_prompt``), or the text of a raw-text row.
    """
    if ex.kind == "chat" and ex.messages:
        messages = [dict(m) for m in ex.messages]
        for message in messages:
            if message.get("role") == "user":
                message["content"] = prefix + (message.get("content") or "")
                break
        return dataclasses.replace(ex, messages=messages)
    return dataclasses.replace(ex, text=prefix + (ex.text or ""))


def mixing_probabilities(
    sizes: Sequence[int], weights: Sequence[float], mixing: str, temperature: float
) -> list[float]:
    """Share of the mixed training set each task gets.

    ``proportional``: p_i ~ n_i. ``weights``: p_i ~ w_i. ``temperature``: p_i ~ n_i^(1/T) (T = 1 is
    proportional, T -> infinity uniform: the smoothing of multilingual BERT / T5 mixtures).
    """
    if mixing == "proportional":
        raw = [float(n) for n in sizes]
    elif mixing == "weights":
        raw = [float(w) for w in weights]
    elif mixing == "temperature":
        raw = [n ** (1.0 / temperature) if n else 0.0 for n in sizes]
    else:
        raise ValueError(f"unknown mixing {mixing!r}; use proportional, weights or temperature")
    total = sum(raw)
    if total <= 0:
        raise ValueError("every task is empty or has weight 0; nothing to mix")
    return [r / total for r in raw]


def quota_counts(probs: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total``, as close to ``probs * total`` as integers get.

    Largest-remainder rounding (each count is the floor or the ceiling of its exact share; ties go to the
    earlier task), so the mix is exact and does not depend on a random draw.
    """
    exact = [p * total for p in probs]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(probs)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw_rows(n_available: int, count: int, rng: random.Random) -> list[int]:
    """``count`` row indices out of ``range(n_available)``: whole shuffled passes, then part of one.

    Below the task's size this samples without replacement; above it every row appears floor or ceil of
    ``count / n_available`` times (upsampling repeats rows evenly instead of at random).
    """
    if n_available <= 0:
        return []
    rows: list[int] = []
    while len(rows) < count:
        order = rng.sample(range(n_available), n_available)
        rows.extend(order[: count - len(rows)])
    return rows


def replay_count(n_earlier: int, fraction: float) -> int:
    """Earlier rows replayed into a stage: ``fraction * n_earlier`` rounded half up, at most all of them."""
    return min(n_earlier, math.floor(fraction * n_earlier + 0.5))
