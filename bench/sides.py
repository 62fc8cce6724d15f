"""What every side-by-side benchmark driver and its sides share: running each side in its own process,
writing the results, and the peak RSS a side reports."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def run_sides(script: str, args: list[str], sides: list[str], tmp: Path) -> dict[str, Any] | None:
    """Run ``script args --side S --side-out F`` for each side, one process each (so each side's peak RSS is
    its own); the sides' JSON by name, or None when one fails (its output says why)."""
    results: dict[str, Any] = {}
    for side in sides:
        side_out = tmp / f"{side}.json"
        print(f"== {side}", flush=True)
        cmd = [sys.executable, script, *args, "--side", side, "--side-out", str(side_out)]
        if subprocess.call(cmd) != 0 or not side_out.exists():
            print(f"{Path(script).stem}: the {side} side failed (see its output above)")
            return None
        results[side] = json.loads(side_out.read_text())
    return results


def write_results(out: Path, results: dict[str, Any], table: str) -> None:
    """``out`` (JSON) and the table beside it (``.md``), then the table on stdout."""
    from tunesmith.io import write_json_atomic, write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results)
    write_text_atomic(out.with_suffix(".md"), table + "\n")
    print(table)
