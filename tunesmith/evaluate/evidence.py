"""The evidence every run collects around training: baselines, forgetting probes, overfitting, gates.

``api.train`` calls :func:`before_training` with the untouched base model and :func:`after_training`
with the tuned one; the returned sections are merged into summary.json (and rendered by report.html)::

    before = before_training(run_dir, model, tokenizer, data, task, cfg)
    ... train ...
    summary.update(after_training(run_dir, model, tokenizer, data, task, cfg, before, result))

Base-model results are cached in the run directory (``baseline_eval.json``, ``probes_base.json``) keyed by
what changes them, so ``--resume`` does not recompute them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.prepare import PreparedData, Split
from tunesmith.data.render import reference_text
from tunesmith.evaluate.baselines import baseline_table, cache_key, run_baselines
from tunesmith.evaluate.gates import check_gates
from tunesmith.evaluate.overfitting import overfitting_report
from tunesmith.evaluate.probes import evaluate_probes, retention_table
from tunesmith.evaluate.runner import cap
from tunesmith.io import write_json_atomic
from tunesmith.runs import RunDir, read_metrics

DEFAULT_OVERFIT_PATIENCE = 3
"""Evaluations of rising validation loss that raise the overfitting flag when early stopping is off."""


def _eval_splits(data: PreparedData, cfg: RunConfig) -> dict[str, Split]:
    splits = {"validation": data.validation, "test": data.test}
    return {name: cap(s, cfg.eval.max_examples) for name, s in splits.items() if s is not None and len(s)}


def _data_hashes(data: PreparedData) -> dict[str, Any]:
    return {k: v.get("sha256") for k, v in data.report.get("files", {}).items()}


def _cached_probes(path: Path, key: str, compute: Any) -> dict[str, Any]:
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["results"]
    results = compute()
    write_json_atomic(path, {"key": key, "results": results})
    return results


def _probe_key(cfg: RunConfig) -> str:
    payload = {"model": cfg.model.model_dump(mode="json"), "eval": cfg.eval.model_dump(mode="json")}
    payload["system_prompt"] = cfg.data.system_prompt
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _base_as_zero_shot(run_dir: Path, task: str) -> dict[str, dict[str, Any]]:
    """This run's base evaluation (base_eval.json + predictions_base_*.jsonl) in baseline form."""
    path = RunDir(run_dir).base_eval
    if not path.exists():
        return {}
    out = {}
    stored = json.loads(path.read_text(encoding="utf-8"))  # {"key": ..., "metrics": {split: metrics}}
    for split, metrics in stored.get("metrics", {}).items():
        preds = Path(f"{RunDir(run_dir).predictions('base')}_{split}.jsonl")
        if preds.exists():
            key = "label" if task == "classification" else "prediction"
            rows = [json.loads(x) for x in preds.read_text(encoding="utf-8").splitlines() if x.strip()]
            out[split] = {"metrics": metrics, "predictions": [r[key] for r in rows]}
    return out


def before_training(
    run_dir: Path, model: Any, tokenizer: Any, data: PreparedData, task: str, cfg: RunConfig
) -> dict[str, Any]:
    """In-context baselines and probe scores of the base model (both cached in ``run_dir``)."""
    out: dict[str, Any] = {"baselines": {}, "probes": {}}
    if cfg.eval.icl_shots and task in ("classification", "generation"):
        out["baselines"] = run_baselines(
            model,
            tokenizer,
            _eval_splits(data, cfg),
            task,
            data.label_names,
            cfg,
            data.train.examples,
            run_dir / "baseline_eval.json",
            cache_key(cfg, _data_hashes(data)),
            _base_as_zero_shot(run_dir, task) if cfg.eval.compare_base else None,
        )
    if cfg.eval.probes or cfg.eval.probe_files or cfg.eval.safety_probe:
        print("tunesmith: forgetting probes on the base model")
        out["probes"] = _cached_probes(
            run_dir / "probes_base.json", _probe_key(cfg), lambda: evaluate_probes(model, tokenizer, cfg)
        )
    return out


def _tuned_predictions(run_dir: Path, split: str, task: str) -> list[Any]:
    key = "label" if task == "classification" else "prediction"
    path = Path(f"{RunDir(run_dir).predictions('tuned')}_{split}.jsonl")
    return [json.loads(line)[key] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _references(split: Split, task: str, label_names: list[str] | None) -> list[Any]:
    if task == "classification":
        return [int(ex.label) for ex in split.examples]
    return [reference_text(ex, label_names) for ex in split.examples]


def after_training(
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    task: str,
    cfg: RunConfig,
    before: dict[str, Any],
    tuned_evals: dict[str, dict[str, Any]],
    result: Any,
) -> dict[str, Any]:
    """Summary sections: ``baselines``, ``forgetting``, ``overfitting`` and ``gates``.

    Args:
        tuned_evals: The tuned model's metrics per split (predictions are read from the run directory).
        result: The training loop's :class:`~tunesmith.train.loop.TrainResult`.
    """
    sections: dict[str, Any] = {}
    splits = _eval_splits(data, cfg)
    baselines = {}
    for name, per_k in before.get("baselines", {}).items():
        if name in tuned_evals and name in splits:
            refs = _references(splits[name], task, data.label_names)
            preds = _tuned_predictions(run_dir, name, task)
            baselines[name] = baseline_table(per_k, tuned_evals[name], preds, refs, task, cfg.seed)
    if baselines:
        sections["baselines"] = baselines
    if before.get("probes"):
        print("tunesmith: forgetting probes on the tuned model")
        tuned_probes = evaluate_probes(model, tokenizer, cfg)
        write_json_atomic(run_dir / "probes_tuned.json", tuned_probes)
        sections["forgetting"] = retention_table(before["probes"], tuned_probes)
    patience = cfg.train.early_stopping.patience or DEFAULT_OVERFIT_PATIENCE
    sections["overfitting"] = overfitting_report(
        read_metrics(run_dir), patience, result.restored_best, result.best_step
    )
    failures = check_gates(cfg.gates, sections)
    sections["gates"] = {"passed": not failures, "failures": failures}
    return sections


def apply_evidence(summary: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """Merge ``sections`` into ``summary``; a failed gate turns a completed run's status into ``failed``."""
    summary.update(sections)
    if sections.get("gates", {}).get("failures") and summary.get("status") == "completed":
        summary["status"] = "failed"
    return summary
