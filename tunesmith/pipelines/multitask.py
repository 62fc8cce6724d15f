"""Multi-task data: every task goes through the normal pipeline, is mixed into one training set, and is
evaluated on its own.

A task is one ``data.tasks[]`` entry: its files, format, labels and prefix over the shared ``data`` settings
(max_length, system prompt, ...). :func:`prepare_tasks` runs :func:`~tunesmith.data.prepare.prepare_data`
on each (so formats, chat rendering, loss masks and the tokenized cache are the single-task ones),
:func:`mix_tasks` draws the training rows by the configured mixing (tunesmith/data/mixing.py), and
:func:`evaluate_tasks` scores each task's validation/test split with its own labels and prompt::

    tasks = prepare_tasks(cfg, cfg.data, tokenizer, run_dir.prepared, default_name="main")
    train_rows, mix_report = mix_tasks(tasks, cfg.data, cfg.seed)
    scores = evaluate_tasks(model, tokenizer, tasks, run_dir.predictions("tuned"))

The orchestration (training, base vs tuned, summary) is the staged run kind (tunesmith/pipelines/staged.py):
a multi-task run is a one-stage sequential run.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import DataConfig, RunConfig
from tunesmith.data.mixing import draw_rows, mixing_probabilities, quota_counts
from tunesmith.data.prepare import PreparedData, prepare_data
from tunesmith.data.tools.pipeline import run_prepare_steps
from tunesmith.errors import DataError
from tunesmith.evaluate.runner import evaluate_split, resolve_task
from tunesmith.infer.batching import TokenData
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.runs import RunDir

MAIN_METRIC = {"classification": "f1_macro", "generation": "token_f1", "language_modeling": "perplexity"}
"""The one number per task in per-task tables and the forgetting matrix (perplexity: lower is better)."""


@dataclass
class TaskData:
    """One prepared task: its splits, its evaluation kind, and the run config prompts render with."""

    name: str
    data: PreparedData
    task: str  # generation / classification / language_modeling
    cfg: RunConfig  # the run config with this task's data section (label prompt, prefix, labels)
    weight: float = 1.0


def task_data_configs(data_cfg: DataConfig) -> list[tuple[str | None, DataConfig, float]]:
    """(task name, data section, weight) per task; a section without ``tasks`` is one unnamed task."""
    if not data_cfg.tasks:
        return [(None, data_cfg, 1.0)]
    defaults = DataConfig()
    out = []
    for task in data_cfg.tasks:
        update: dict[str, Any] = {
            "train": task.train,
            "validation": task.validation,
            "test": task.test,
            "format": task.format,
            "labels": task.labels,
            "prefix": task.prefix if task.prefix is not None else data_cfg.prefix,
            # Reset so a task's tokenized cache does not depend on the other tasks or the mixing.
            "tasks": None,
            "mixing": defaults.mixing,
            "temperature": defaults.temperature,
        }
        if task.label_prompt is not None:
            update["label_prompt"] = task.label_prompt
        out.append((task.name, data_cfg.model_copy(update=update), task.weight))
    return out


def prepare_tasks(
    cfg: RunConfig, data_cfg: DataConfig, tokenizer: Any, prepared_dir: Path, default_name: str
) -> list[TaskData]:
    """Prepare every task of ``data_cfg`` (``data.prepare`` steps included, outputs under ``prepared_dir``).

    Raises:
        DataError: as :func:`~tunesmith.data.prepare.prepare_data`, prefixed with the task's name.
    """
    tasks = []
    for name, task_cfg, weight in task_data_configs(data_cfg):
        name = name or default_name
        reports: list[dict[str, Any]] = []
        try:
            if task_cfg.prepare and task_cfg.train is not None:
                train, reports = run_prepare_steps(
                    task_cfg.train,
                    task_cfg.prepare,
                    prepared_dir / name,
                    on_bad_row=task_cfg.on_bad_row,
                    model=cfg.model.name,
                )
                task_cfg = task_cfg.model_copy(update={"train": str(train)})
            data = prepare_data(task_cfg, tokenizer, cfg.seed)
        except DataError as err:
            raise DataError(f"task {name!r}: {err}") from None
        if reports:
            data.report["prepare"] = reports
        run_cfg = cfg.model_copy(update={"data": task_cfg})
        tasks.append(TaskData(name, data, resolve_task(run_cfg, data.kind), run_cfg, weight))
    return tasks


def mix_tasks(tasks: list[TaskData], data_cfg: DataConfig, seed: int) -> tuple[TokenData, dict[str, Any]]:
    """The training rows of all tasks mixed by ``data.mixing``, and what was drawn per task.

    The mix has as many rows as the tasks together; each task's quota is exact (largest remainder) and its
    rows are drawn seeded: without replacement up to its size, whole passes beyond. A single task is
    returned as it is.
    """
    sizes = [len(t.data.train) for t in tasks]
    if len(tasks) == 1:
        split = tasks[0].data.train
        return TokenData(split.input_ids, split.labels), {
            tasks[0].name: {"rows": sizes[0], "drawn": sizes[0]}
        }
    probs = mixing_probabilities(sizes, [t.weight for t in tasks], data_cfg.mixing, data_cfg.temperature)
    counts = quota_counts(probs, sum(sizes))
    rng = random.Random(seed)
    picks = [(i, row) for i, count in enumerate(counts) for row in draw_rows(sizes[i], count, rng)]
    rng.shuffle(picks)  # batch order is re-seeded by the loop; this only keeps the file free of task blocks
    mixed = TokenData(
        [tasks[i].data.train.input_ids[r] for i, r in picks],
        [tasks[i].data.train.labels[r] for i, r in picks],
    )
    report = {
        t.name: {"rows": n, "share": round(p, 6), "drawn": c}
        for t, n, p, c in zip(tasks, sizes, probs, counts, strict=True)
    }
    return mixed, report


def validation_rows(tasks: list[TaskData]) -> TokenData | None:
    """Every task's validation rows together: the loop's validation loss (early stopping, best weights)."""
    splits = [t.data.validation for t in tasks if t.data.validation is not None and len(t.data.validation)]
    if not splits:
        return None
    return TokenData([x for s in splits for x in s.input_ids], [x for s in splits for x in s.labels])


def evaluate_tasks(
    model: Any, tokenizer: Any, tasks: list[TaskData], save_as: Path | None = None
) -> dict[str, dict[str, Any]]:
    """``{task: {split: metrics}}`` over each task's validation and test split.

    With ``save_as``, predictions go to ``<save_as>_<task>_<split>.jsonl``.
    """
    results: dict[str, dict[str, Any]] = {}
    for t in tasks:
        results[t.name] = {}
        for split_name in ("validation", "test"):
            split = getattr(t.data, split_name)
            if split is None or not len(split):
                continue
            metrics, predictions = evaluate_split(model, tokenizer, split, t.task, t.data.label_names, t.cfg)
            results[t.name][split_name] = metrics
            if save_as is not None and predictions:
                key = "label" if t.task == "classification" else "prediction"
                path = f"{save_as}_{t.name}_{split_name}.jsonl"
                write_jsonl_atomic(path, [{key: p} for p in predictions])
    return results


def main_score(task: str, metrics: dict[str, Any] | None) -> float | None:
    """The task's main metric (:data:`MAIN_METRIC`) from its metrics, or None."""
    if not metrics:
        return None
    value = metrics.get(MAIN_METRIC.get(task, "loss"))
    return float(value) if isinstance(value, int | float) else None


def cached_base_eval(
    path: Path, model: Any, tokenizer: Any, tasks: list[TaskData], cfg: RunConfig
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_tasks` on the base model, cached at ``path`` so ``--resume`` does not redo it.

    Keyed by what the numbers depend on: model, eval settings, each task's data section and file hashes.
    """
    payload = [cfg.model.model_dump(mode="json"), cfg.eval.model_dump(mode="json")]
    for t in tasks:
        files = {k: v.get("sha256") for k, v in t.data.report.get("files", {}).items()}
        payload.append([t.name, t.task, t.cfg.data.model_dump(mode="json"), files])
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["metrics"]
    print("tunesmith: evaluating the base model on every task")
    metrics = evaluate_tasks(model, tokenizer, tasks, save_as=RunDir(path.parent).predictions("base"))
    write_json_atomic(path, {"key": key, "metrics": metrics})
    return metrics


def task_table(tasks: list[TaskData], base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """Per task and split: the main metric for base and tuned and the change (summary.json ``tasks``)."""
    table: dict[str, Any] = {}
    for t in tasks:
        metric = MAIN_METRIC.get(t.task, "loss")
        for split, metrics in tuned.get(t.name, {}).items():
            b = main_score(t.task, base.get(t.name, {}).get(split))
            v = main_score(t.task, metrics)
            row = {
                "task": t.name,
                "split": split,
                "metric": metric,
                "base": b,
                "tuned": v,
                "n": metrics.get("n"),
            }
            row["delta"] = None if b is None or v is None else v - b
            table[f"{t.name}/{split}"] = row
    return table
