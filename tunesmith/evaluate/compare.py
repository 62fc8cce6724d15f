"""Compare finished runs at a glance: one table and one plot across run directories.

``tunesmith compare RUN_DIR... [--out DIR]`` reads each run's summary.json and writes ``compare.json`` and
``compare.png`` (tuned validation metrics in [0, 1] side by side) to ``--out`` (default: the current
directory), and prints the table: status, method, validation metrics (tuned), gain over the best in-context
baseline, training time, peak memory and trainable parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError
from tunesmith.io import write_bytes_atomic, write_json_atomic
from tunesmith.report.plots import comparison_bar_png
from tunesmith.runs import RunDir


def run_row(run_dir: str | Path) -> dict[str, Any]:
    """One comparison row from ``run_dir/summary.json``."""
    path = RunDir(run_dir).summary
    if not path.exists():
        raise RunError(f"{run_dir} has no summary.json: pass directories of finished runs")
    s = json.loads(path.read_text(encoding="utf-8"))
    evals = s.get("eval", {})
    split = "validation" if "validation" in evals else next(iter(evals), None)
    tuned = (evals.get(split) or {}).get("tuned") or {} if split else {}
    gain = (s.get("baselines") or {}).get(split or "", {}).get("gain")
    return {
        "run": str(run_dir),
        "status": s.get("status"),
        "method": s.get("method"),
        "metrics": {k: v for k, v in tuned.items() if isinstance(v, float)},
        "gain_vs_baseline": gain,
        "train_s": (s.get("timings") or {}).get("train_s"),
        "peak_memory_mb": s.get("peak_memory_mb"),
        "trainable_params": s.get("trainable_params"),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table, one line per run, metrics as columns (union, first-seen order)."""
    metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    head = ["run", "status", "method", *metrics, "gain", "train_s", "peak_MB", "trainable"]
    lines = [head]
    for r in rows:
        cells = [r["run"], str(r["status"]), str(r["method"])]
        cells += [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "-" for m in metrics]
        gain = r["gain_vs_baseline"]
        cells += ["-" if gain is None else f"{gain:+.4f}"]
        cells += [f"{r['train_s']:.1f}" if r["train_s"] is not None else "-"]
        cells += [f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"]
        cells += [f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "-"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def compare_runs(run_dirs: list[str | Path], out: str | Path = ".") -> dict[str, Any]:
    """Rows for every run; writes compare.json and (when some metric is a rate) compare.png to ``out``."""
    rows = [run_row(d) for d in run_dirs]
    write_json_atomic(Path(out) / "compare.json", {"runs": rows})
    rates = [
        m
        for m in dict.fromkeys(k for r in rows for k in r["metrics"])
        if all(0 <= r["metrics"].get(m, 0) <= 1 for r in rows)
    ]
    if rates:
        bars = {Path(r["run"]).name: r["metrics"] for r in rows}
        write_bytes_atomic(Path(out) / "compare.png", comparison_bar_png(bars, rates))
    return {"runs": rows, "table": format_table(rows)}
