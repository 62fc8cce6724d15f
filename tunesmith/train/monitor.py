"""Small observers kept out of the step: the metrics log and peak memory."""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunesmith.io import write_text_atomic


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step or evaluation, flushed line by line.

    On resume, rows after the checkpoint's step are dropped first (they belong to the run that was cut off),
    so the log reads as one uninterrupted run. ``on_write`` sees each new row (experiment trackers).
    """

    def __init__(
        self, path: Path, truncate_after: int = 0, on_write: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.path = path
        self.on_write = on_write
        self.rows: list[dict[str, Any]] = []
        if path.exists() and truncate_after > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("step", 0) <= truncate_after:
                        self.rows.append(row)
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.on_write is not None:
            self.on_write(row)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and peak CUDA memory when on GPU), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = peak / 1024 / (1024 if sys.platform == "darwin" else 1)
    if torch.cuda.is_available():
        rss = max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return round(rss, 1)
