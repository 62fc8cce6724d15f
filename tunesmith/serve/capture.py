"""Traffic capture and feedback storage for ``tunesmith serve --capture DIR`` (off unless asked).

capture = Capture("traffic/", rotate_bytes=8 << 20, max_bytes=1 << 30)
capture.record(route="chat", model="bot", response_id="chatcmpl-…", index=0, messages=[...], output="…", ...)
capture.feedback({"id": "chatcmpl-…", "rating": "up"})

Every text goes through ``data pii`` redaction *before* it is written: the files never hold an e-mail, a
phone number or a card number that a user typed. Rows are appended to ``capture-<time>-<n>.jsonl``; a file
past ``rotate_bytes`` is closed and a new one started, and when all capture files together pass
``max_bytes`` the oldest are deleted (monitoring wants recent traffic). Feedback rows go to
``feedback-*.jsonl`` beside them and are never rotated away. The row shapes are in
:mod:`tunesmith.data.traffic`, which reads them back.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from tunesmith.data.tools.pii import redact_text
from tunesmith.data.traffic import CAPTURE_GLOB, rating_score, read_jsonl_rows

KNOWN_IDS = 100_000
"""Response ids remembered for feedback validation (oldest forgotten first)."""


class _Appender:
    """One family of rotating JSONL files (``<prefix>-<time>-<n>.jsonl``); the caller holds the lock."""

    def __init__(self, directory: Path, prefix: str, rotate_bytes: int) -> None:
        self.directory, self.prefix, self.rotate_bytes = directory, prefix, rotate_bytes
        self.path: Path | None = None
        self.count = 0

    def append(self, row: dict[str, Any]) -> int:
        """Append one row; the bytes written."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        if self.path is None or self.path.stat().st_size + len(line) > self.rotate_bytes:
            self.count += 1
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self.path = self.directory / f"{self.prefix}-{stamp}-{os.getpid()}-{self.count:04d}.jsonl"
        # One os.write of the whole line on an O_APPEND descriptor: a crash leaves at most one torn last line,
        # which the reader skips.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return len(line)


class Capture:
    """Redacting, rotating, size-capped writer of served traffic and feedback; thread-safe."""

    def __init__(self, directory: str | Path, rotate_bytes: int = 8 << 20, max_bytes: int = 1 << 30) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._captures = _Appender(self.directory, "capture", rotate_bytes)
        self._feedback = _Appender(self.directory, "feedback", rotate_bytes)
        self.known: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.redacted: Counter[str] = Counter()
        self.deleted_files = 0
        self.total_bytes = sum(p.stat().st_size for p in self.directory.glob(CAPTURE_GLOB))
        for path in sorted(
            self.directory.glob(CAPTURE_GLOB)
        ):  # feedback may name answers from before a restart
            for row in read_jsonl_rows(path):
                self._remember(str(row.get("id")), int(row.get("index") or 0))

    def _remember(self, response_id: str, index: int) -> None:
        self.known[(response_id, index)] = None
        if len(self.known) > KNOWN_IDS:
            self.known.popitem(last=False)

    def _redact(self, text: str) -> str:
        clean, counts = redact_text(text)
        self.redacted.update(counts)
        return clean

    def record(
        self,
        *,
        route: str,
        model: str,
        response_id: str,
        index: int,
        output: str,
        finish_reason: str,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> None:
        """Append one answered prompt (chat ``messages`` or completion ``prompt``), redacted."""
        with self._lock:
            before = sum(self.redacted.values())
            row: dict[str, Any] = {"id": response_id, "index": index, "time": round(time.time(), 3)}
            row.update(route=route, model=model)
            if messages is not None:
                row["messages"] = [
                    {"role": m.get("role"), "content": self._redact(str(m.get("content") or ""))}
                    for m in messages
                ]
            else:
                row["prompt"] = self._redact(prompt or "")
            row.update(output=self._redact(output), finish_reason=finish_reason)
            row.update(latency_s=round(latency_s, 4), prompt_tokens=prompt_tokens)
            row.update(completion_tokens=completion_tokens, redacted=sum(self.redacted.values()) - before)
            self.total_bytes += self._captures.append(row)
            self._remember(response_id, index)
            if self.total_bytes > self.max_bytes:  # a running total: the directory is listed only when over
                self._enforce_cap()

    def _enforce_cap(self) -> None:
        """Delete the oldest capture files (never the one being written) until the total fits the cap."""
        # Oldest first: by last write, then by name (time-pid-count) for writes within one clock tick.
        files = sorted(self.directory.glob(CAPTURE_GLOB), key=lambda p: (p.stat().st_mtime, p.name))
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes or path == self._captures.path:
                break
            total -= path.stat().st_size
            path.unlink()
            self.deleted_files += 1
        self.total_bytes = total

    def is_known(self, response_id: str, index: int = 0) -> bool:
        with self._lock:
            return (response_id, index) in self.known

    def feedback(
        self,
        response_id: str,
        rating: str | int,
        index: int = 0,
        correction: str | None = None,
        comment: str | None = None,
    ) -> float:
        """Store one rating (and optional correction / comment, redacted); its 0–1 score.

        Raises:
            DataError: the rating is not ``up``, ``down`` or 1–5.
        """
        score = rating_score(rating)
        with self._lock:
            row: dict[str, Any] = {"id": response_id, "index": index, "time": round(time.time(), 3)}
            row.update(rating=rating, score=score)
            if correction:
                row["correction"] = self._redact(correction)
            if comment:
                row["comment"] = self._redact(comment)
            self._feedback.append(row)
        return score
