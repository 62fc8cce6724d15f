"""Human feedback the UI records: pairwise judgements, 1-5 ratings of predictions, labels for rows.

    <runs>/.feedback/preferences.jsonl   {"prompt", "chosen", "rejected", "judge", "time", "models", ...}
    <runs>/.feedback/judgements.jsonl    every judgement, ties and "both bad" too (they make no DPO pair)
    <runs>/.feedback/ratings.jsonl       {"run", "item", "rater", "score", "tags", "time"}
    <runs>/.feedback/labels.jsonl        {"text", "label", "labeller", "time", "source"}

preferences.jsonl is the ``prompt_chosen_rejected`` shape the DPO trainer reads (``data.train`` of a run
with ``objective.name=dpo``); the extra keys are kept apart by its reader. Each record is one line appended
under a file lock, so two browser tabs (or two people on one server) never interleave half lines.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunesmith.io import file_lock, read_jsonl

FEEDBACK = ".feedback"
PREFERENCES = "preferences.jsonl"
JUDGEMENTS = "judgements.jsonl"
RATINGS = "ratings.jsonl"
LABELS = "labels.jsonl"


class Response(BaseModel):
    model: str = Field(min_length=1, max_length=500)
    text: str = Field(max_length=100_000)


class Judgement(BaseModel):
    """One pairwise judgement: responses in the order the person saw them (A left, B right)."""

    prompt: str = Field(min_length=1, max_length=100_000)
    a: Response
    b: Response
    choice: Literal["a", "b", "tie", "both_bad"]
    judge: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=5_000)


class Rating(BaseModel):
    run: str = Field(min_length=1, max_length=500)
    item: int = Field(ge=0)
    rater: str = Field(min_length=1, max_length=200)
    score: int = Field(ge=1, le=5)
    tags: list[str] = Field(default_factory=list, max_length=20)


class Label(BaseModel):
    text: str = Field(min_length=1, max_length=100_000)
    label: str = Field(min_length=1, max_length=200)
    labeller: str = Field(min_length=1, max_length=200)
    source: str = Field(default="", max_length=1_000)


def _append(path: Path, row: dict[str, Any]) -> None:
    """One JSON line appended whole (locked, flushed to disk before the request is answered)."""
    with file_lock(path.with_name(path.name + ".lock")), open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


class Feedback:
    """The feedback files of one runs directory."""

    def __init__(self, runs_root: Path) -> None:
        self.dir = runs_root / FEEDBACK
        self.preferences, self.judgements = self.dir / PREFERENCES, self.dir / JUDGEMENTS
        self.ratings, self.labels = self.dir / RATINGS, self.dir / LABELS

    def judge(self, j: Judgement) -> dict[str, Any]:
        """Record a judgement; an A or B pick also becomes a preference pair. Returns the progress counts."""
        self.dir.mkdir(parents=True, exist_ok=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {**j.model_dump(), "time": now}
        _append(self.judgements, record)
        if j.choice in ("a", "b"):
            chosen, rejected = (j.a, j.b) if j.choice == "a" else (j.b, j.a)
            pair = {
                "prompt": j.prompt,
                "chosen": chosen.text,
                "rejected": rejected.text,
                "judge": j.judge,
                "time": now,
                "models": {"chosen": chosen.model, "rejected": rejected.model},
                "comment": j.comment,
            }
            _append(self.preferences, pair)
        return self.progress()

    def progress(self) -> dict[str, Any]:
        rows = _read_rows(self.judgements)
        counts = {c: sum(r["choice"] == c for r in rows) for c in ("a", "b", "tie", "both_bad")}
        return {"judged": len(rows), "pairs": counts["a"] + counts["b"], "choices": counts}

    def rate(self, r: Rating) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _append(self.ratings, {**r.model_dump(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def rating_summary(self, run: str) -> dict[str, Any]:
        """Mean score, counts, tags, and agreement on items two or more people rated.

        Agreement: the share of rater pairs on the same item that gave the same score (exact) and within one
        point (adjacent), with the mean absolute difference. A rater's latest score of an item counts.
        """
        latest: dict[tuple[int, str], dict[str, Any]] = {}
        for row in _read_rows(self.ratings):
            if row["run"] == run:
                latest[(row["item"], row["rater"])] = row
        scores = [r["score"] for r in latest.values()]
        by_item: dict[int, list[int]] = defaultdict(list)
        tags: dict[str, int] = defaultdict(int)
        for (item, _), row in latest.items():
            by_item[item].append(row["score"])
            for tag in row["tags"]:
                tags[tag] += 1
        pairs = [(a, b) for s in by_item.values() for i, a in enumerate(s) for b in s[i + 1 :]]
        agreement = None
        if pairs:
            agreement = {
                "items": sum(len(s) > 1 for s in by_item.values()),
                "exact": sum(a == b for a, b in pairs) / len(pairs),
                "adjacent": sum(abs(a - b) <= 1 for a, b in pairs) / len(pairs),
                "mean_abs_diff": sum(abs(a - b) for a, b in pairs) / len(pairs),
            }
        return {
            "ratings": len(scores),
            "items": len(by_item),
            "raters": len({rater for _, rater in latest}),
            "mean": sum(scores) / len(scores) if scores else None,
            "tags": dict(tags),
            "agreement": agreement,
        }

    def label(self, lab: Label) -> int:
        """Record a label; the number of labelled rows so far."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _append(self.labels, {**lab.model_dump(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return len(_read_rows(self.labels))

    def labelled(self) -> list[dict[str, Any]]:
        """Labelled rows ready to train on, ``{"text", "label"}``; a text labelled twice keeps its latest."""
        latest = {row["text"]: row["label"] for row in _read_rows(self.labels)}
        return [{"text": text, "label": label} for text, label in latest.items()]
