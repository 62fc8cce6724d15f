"""What the UI shows of run directories: a table row per run, a run's detail, and its metrics as they grow.

Every file name comes from :class:`tunesmith.runs.RunDir`; this module only reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import RunError
from tunesmith.runs import RunDir

KEY_METRICS = ("f1_macro", "accuracy", "exact_match", "reward_accuracy", "perplexity", "loss")
"""The table's key metric: the first of these a run's evaluation reports (higher-is-better ones first)."""
LIVE_S = 120.0
"""A run without summary.json whose metrics.jsonl changed this recently is shown as ``running``."""


def read_json(path: Path) -> dict[str, Any]:
    """A run file's JSON object; {} when it is missing or half-written (the page shows what there is)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _config(run: RunDir) -> dict[str, Any]:
    try:
        return yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def settled(run: RunDir) -> bool:
    """summary.json was written after the last metrics row: the run ended (a resumed run logs past it)."""
    if not run.summary.exists():
        return False
    return not run.metrics.exists() or run.summary.stat().st_mtime >= run.metrics.stat().st_mtime


def status_of(run: RunDir, summary: dict[str, Any]) -> str:
    """completed / failed / interrupted from summary.json; else running, stopping, stopped or new."""
    if summary.get("status") and settled(run):
        return str(summary["status"])
    if run.stop_request.exists():
        return "stopping"
    if run.metrics.exists() and time.time() - run.metrics.stat().st_mtime < LIVE_S:
        return "running"
    return "stopped" if run.checkpoints.is_dir() else "new"


def key_metric(summary: dict[str, Any]) -> dict[str, Any] | None:
    """``{"name", "split", "base", "tuned"}`` of the run's headline metric, or None before evaluation."""
    evals = summary.get("eval") or {}
    split = "validation" if "validation" in evals else next(iter(evals), None)
    if split is None:
        return None
    entry = evals[split] or {}
    tuned, base = entry.get("tuned") or {}, entry.get("base") or {}
    for name in KEY_METRICS:
        if isinstance(tuned.get(name), int | float):
            return {"name": name, "split": split, "base": base.get(name), "tuned": tuned[name]}
    return None


def run_row(path: Path) -> dict[str, Any]:
    """One row of the runs table."""
    run = RunDir(path)
    summary, cfg = read_json(run.summary), _config(run)
    timings = summary.get("timings") or {}
    gates = summary.get("gates")
    return {
        "name": path.name,
        "kind": summary.get("task") or (cfg.get("model") or {}).get("head") or "-",
        "method": summary.get("method") or (cfg.get("method") or {}).get("name"),
        "model": summary.get("model") or (cfg.get("model") or {}).get("name"),
        "status": status_of(run, summary),
        "key_metric": key_metric(summary),
        "time_s": timings.get("total_s", timings.get("train_s")),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "gates_passed": None if not isinstance(gates, dict) else gates.get("passed"),
        "modified": run.path.stat().st_mtime,
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Rows of every run directory (a folder with config.yaml) right under ``root``, newest first."""
    if not root.is_dir():
        return []
    paths = [p for p in root.iterdir() if RunDir(p).config.is_file()]
    return sorted((run_row(p) for p in paths), key=lambda r: -r["modified"])


def filter_rows(rows: list[dict[str, Any]], **wanted: str | None) -> list[dict[str, Any]]:
    """Rows whose field equals each given value; ``q`` matches a substring of the name or model."""
    query = (wanted.pop("q", None) or "").lower()
    out = [r for r in rows if all(v in (None, "") or str(r.get(k)) == v for k, v in wanted.items())]
    return [r for r in out if query in r["name"].lower() or query in str(r["model"]).lower()]


def resolve_run(root: Path, name: str) -> RunDir:
    """The run directory ``root/name``; ``name`` must be a plain folder name (no path tricks).

    Raises:
        RunError: not a folder name, or no run directory of that name.
    """
    if not name or name != Path(name).name or name in (".", ".."):
        raise RunError(f"{name!r} is not a run name (a folder right under the runs directory)")
    run = RunDir(root / name)
    if not run.config.is_file():
        raise RunError(f"no run named {name!r} in {root}; GET /ui/api/runs lists them")
    return run


def checkpoints(run: RunDir) -> list[dict[str, Any]]:
    """Saved checkpoints (and the final adapter/ or model/) as ``{"name", "path"}``."""
    found = []
    if run.checkpoints.is_dir():
        found = [{"name": p.name, "path": str(p)} for p in sorted(run.checkpoints.iterdir()) if p.is_dir()]
    saved = run.saved()
    if saved is not None:
        found.append({"name": saved.name + "/ (final)", "path": str(saved)})
    return found


def run_detail(run: RunDir) -> dict[str, Any]:
    """Everything the run page shows but the report and the curves."""
    config_text = run.config.read_text(encoding="utf-8") if run.config.exists() else ""
    return {
        "row": run_row(run.path),
        "summary": read_json(run.summary),
        "data_report": read_json(run.data_report),
        "config": config_text,
        "checkpoints": checkpoints(run),
        "has_report": run.report.exists(),
    }


def read_metrics_from(run: RunDir, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete metrics.jsonl rows after byte ``offset``, and the offset after the last complete line.

    A half-written last line (the trainer is mid-write) is left for the next read.
    """
    if not run.metrics.exists():
        return [], offset
    with open(run.metrics, "rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n") + 1
    rows = []
    for line in chunk[:end].splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a corrupt line: skip it rather than stop the stream
    return rows, offset + end


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": leaf}`` (for config diffs)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def compare(runs: list[RunDir]) -> dict[str, Any]:
    """Side by side: rows, metrics per split, per-class F1, forgetting probes, the config keys that differ."""
    if len(runs) < 2:
        raise RunError("pick at least two runs to compare")
    summaries = [read_json(r.summary) for r in runs]
    configs = [flat(_config(r)) for r in runs]
    keys = sorted(set().union(*configs))
    diff = {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1}
    diff.pop("name", None)
    return {
        "runs": [r.path.name for r in runs],
        "rows": [run_row(r.path) for r in runs],
        "eval": [s.get("eval") or {} for s in summaries],
        "per_class_f1": [_per_class_f1(s) for s in summaries],
        "forgetting": [s.get("forgetting") for s in summaries],
        "config_diff": diff,
    }


def _per_class_f1(summary: dict[str, Any]) -> dict[str, float]:
    evals = summary.get("eval") or {}
    split = "validation" if "validation" in evals else next(iter(evals), None)
    tuned = ((evals.get(split) or {}).get("tuned") or {}) if split else {}
    return dict(tuned.get("per_class_f1") or {})


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise RunError(f"{path} is not a directory; pass --runs DIR (the folder your runs are written to)")
    return path
