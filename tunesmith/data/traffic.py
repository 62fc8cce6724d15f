"""Served traffic as data: the files ``tunesmith serve --capture DIR`` writes, and training rows from them.

A capture directory holds two kinds of JSON Lines files (one object a line; a torn last line, from a crash
mid-write, is skipped)::

    capture-<time>-<n>.jsonl   one row per answered prompt: {"id", "index", "time", "route", "model",
                               "messages" (chat) | "prompt" (completions), "output", "finish_reason",
                               "latency_s", "prompt_tokens", "completion_tokens", "redacted"}
    feedback-<time>-<n>.jsonl  one row per POST /v1/feedback: {"id", "index", "time", "rating",
                               "score", "correction"?, "comment"?}

Every text was redacted (``data pii``) before it was written. ``score`` is the rating on one scale:
``up`` = 1, ``down`` = 0, stars 1–5 -> (stars - 1) / 4. :func:`feedback_rows` turns feedback into rows:

* a correction -> an SFT chat row (the prompt, the corrected answer) and a preference pair (correction chosen
  over the served answer);
* two answers to the same prompt, one rated good (score >= 0.75) and one bad (<= 0.25) -> a preference pair
  in the ``prompt_chosen_rejected`` shape that DPO / reward runs read.

``tunesmith data from-feedback DIR --out OUT_DIR`` writes them as ``sft.jsonl`` and ``preference.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError
from tunesmith.io import write_json_atomic, write_jsonl_atomic

CAPTURE_GLOB = "capture-*.jsonl"
FEEDBACK_GLOB = "feedback-*.jsonl"
GOOD, BAD = 0.75, 0.25
"""A score at or above GOOD is a preferred answer, at or below BAD a rejected one."""


def rating_score(rating: str | int) -> float:
    """``up``/``down`` or 1–5 stars on one 0–1 scale.

    Raises:
        DataError: any other value.
    """
    if rating == "up":
        return 1.0
    if rating == "down":
        return 0.0
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return (rating - 1) / 4
    raise DataError(f'rating must be "up", "down" or an integer 1-5, got {rating!r}')


def read_jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of one capture/feedback file; unparsable lines (a write torn by a crash) are skipped."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def _files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def read_traffic(directory: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(captured responses, feedback rows) of a capture directory, each in time order.

    Raises:
        DataError: the directory does not exist or holds no capture file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; pass the DIR of `tunesmith serve --capture DIR`")
    captures = [row for path in _files(directory, CAPTURE_GLOB) for row in read_jsonl_rows(path)]
    if not captures:
        raise DataError(
            f"{directory} holds no {CAPTURE_GLOB} file with rows: serve with `--capture {directory}` and "
            "send some requests first"
        )
    feedback = [row for path in _files(directory, FEEDBACK_GLOB) for row in read_jsonl_rows(path)]
    key = lambda row: float(row.get("time") or 0.0)  # noqa: E731 - a sort key
    return sorted(captures, key=key), sorted(feedback, key=key)


def prompt_messages(capture: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt of a captured response as chat messages (a completion's prompt is one user turn)."""
    if capture.get("messages") is not None:
        return [dict(m) for m in capture["messages"]]
    return [{"role": "user", "content": str(capture.get("prompt") or "")}]


def prompt_text(capture: dict[str, Any]) -> str:
    """What the model read, as text: the non-assistant turns of a chat, or the completion prompt."""
    if capture.get("messages") is None:
        return str(capture.get("prompt") or "")
    return "\n".join(str(m.get("content") or "") for m in capture["messages"] if m.get("role") != "assistant")


def _key(row: dict[str, Any]) -> tuple[str, int]:
    return str(row.get("id")), int(row.get("index") or 0)


def _pairs(rated: list[tuple[dict[str, Any], float]]) -> list[tuple[str, str]]:
    """(chosen, rejected) outputs among answers to one prompt: every good one against every bad one.

    An empty answer is no training signal (and preference readers refuse it): it pairs with nothing.
    """
    good = [c["output"] for c, s in rated if s >= GOOD and c["output"].strip()]
    bad = [c["output"] for c, s in rated if s <= BAD and c["output"].strip()]
    return [(g, b) for g in dict.fromkeys(good) for b in dict.fromkeys(bad) if g != b]


def feedback_rows(
    captures: list[dict[str, Any]], feedback: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(SFT chat rows, preference rows, counts) from captured responses and their feedback.

    The latest feedback on a response wins (a user may change their mind). Feedback on a response that is not
    in the capture (its file was rotated away) is counted under ``orphaned`` and skipped.
    """
    by_key = {_key(c): c for c in captures}
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    orphaned = 0
    for row in feedback:
        if _key(row) in by_key:
            latest[_key(row)] = row
        else:
            orphaned += 1
    sft: list[dict[str, Any]] = []
    prefs: list[dict[str, Any]] = []
    by_prompt: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for key, row in latest.items():
        capture = by_key[key]
        messages = prompt_messages(capture)
        correction = (row.get("correction") or "").strip()
        if correction:
            sft.append({"messages": [*messages, {"role": "assistant", "content": correction}]})
            if correction != capture["output"] and capture["output"].strip():
                prefs.append({"prompt": messages, "chosen": correction, "rejected": capture["output"]})
        prompt = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        by_prompt.setdefault(prompt, []).append((capture, float(row["score"])))
    for prompt, rated in by_prompt.items():
        messages = json.loads(prompt)
        prefs += [{"prompt": messages, "chosen": g, "rejected": b} for g, b in _pairs(rated)]
    counts = {
        "responses": len(captures),
        "feedback": len(feedback),
        "rated_responses": len(latest),
        "orphaned": orphaned,
        "sft_rows": len(sft),
        "preference_rows": len(prefs),
    }
    return sft, prefs, counts


def from_feedback(directory: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``sft.jsonl``, ``preference.jsonl`` and ``from_feedback.json`` (counts) under ``out``.

    Raises:
        DataError: no capture in ``directory``, or no feedback turned into a row.
    """
    captures, feedback = read_traffic(directory)
    sft, prefs, counts = feedback_rows(captures, feedback)
    if not sft and not prefs:
        raise DataError(
            f"no training row from {directory}: {counts['feedback']} feedback row(s), none a correction or "
            "a good/bad pair on one prompt. Collect more feedback (POST /v1/feedback) and rerun"
        )
    out = Path(out)
    write_jsonl_atomic(out / "sft.jsonl", sft)
    write_jsonl_atomic(out / "preference.jsonl", prefs)
    report = {"source": str(directory), **counts}
    write_json_atomic(out / "from_feedback.json", report)
    return report
