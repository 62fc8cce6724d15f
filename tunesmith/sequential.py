"""Sequential and multi-task runs: ``stages:`` trained one after another, each from the previous result.

``api.train`` hands a config with ``stages`` or ``data.tasks`` here. A stage's ``data``/``train`` sections
override the top-level ones key by key; its data may itself be multi-task. Stage k continues training the
same in-memory model (for LoRA the same adapter) with a fresh optimizer and schedule. After each stage the
validation sets of all stages so far are evaluated; the main metric (macro-F1, token F1 or perplexity)
fills the forgetting matrix (rows = after stage, columns = eval set) in summary.json and report.html.
``stages[].replay`` adds a share of the earlier stages' training rows to a stage's own. A multi-task run
without ``stages`` is one stage, written like a plain run::

    runs/<name>/ config.yaml data_report.json summary.json report.html metrics.jsonl adapter/|model/
      base_eval_tasks.json  predictions_{base,tuned}_<eval set>_<split>.jsonl
      stages/01-<name>/     per stage: metrics.jsonl checkpoints/ adapter/|model/ end/ stage.json
                            (sequential runs only; the run's own adapter/|model/ is the last stage's)

Resume is stage-granular for sequential runs: with ``resume=True`` finished stages (``stage.json``) are not
retrained, their end weights are reloaded, and the interrupted stage continues from its last checkpoint
(train.save_every) or restarts. A one-stage run resumes exactly like a plain run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tunesmith.config import DataConfig, RunConfig, TrainConfig, _format_errors, dump_config
from tunesmith.errors import ConfigError
from tunesmith.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from tunesmith.methods import optimizer_for
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.loop import TokenData, TrainResult, train_loop
from tunesmith.train.multitask import (
    MAIN_METRIC,
    TaskData,
    cached_base_eval,
    evaluate_tasks,
    main_score,
    mix_tasks,
    task_table,
    validation_rows,
)


@dataclass
class Stage:
    name: str
    dir: Path
    data_cfg: DataConfig
    train_cfg: TrainConfig
    replay: float
    tasks: list[TaskData]  # this stage's eval sets (one, or one per task)


def _merged(model: type[BaseModel], top: BaseModel, override: BaseModel, where: str) -> Any:
    """``top`` with the keys set in ``override`` replaced (nested sections key by key), validated."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    raw = top.model_dump(mode="json")
    over = override.model_dump(mode="json", exclude_unset=True)
    if model is DataConfig and "tasks" in over:  # a stage's tasks replace the top-level files, and back
        raw.update(train=None, validation=None, test=None)
    elif model is DataConfig and {"train", "validation", "test"} & over.keys():
        raw["tasks"] = None
    try:
        return model.model_validate(merge(raw, over))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def plan_stages(cfg: RunConfig) -> list[tuple[str, DataConfig, TrainConfig, float]]:
    """(name, data, train, replay) per stage; a config without ``stages`` is one stage named after the run."""
    if not cfg.stages:
        return [(cfg.name, cfg.data, cfg.train, 0.0)]
    return [
        (
            st.name,
            _merged(DataConfig, cfg.data, st.data, f"stages[{i}] ({st.name}) data merged with data"),
            _merged(TrainConfig, cfg.train, st.train, f"stages[{i}] ({st.name}) train merged with train"),
            st.replay,
        )
        for i, st in enumerate(cfg.stages)
    ]


def _prepare_stages(cfg: RunConfig, tokenizer: Any, run_dir: Path) -> list[Stage]:
    """Every stage's data, prepared before any training so a bad file fails in seconds, not hours."""
    from tunesmith.train.multitask import prepare_tasks

    planned = plan_stages(cfg)
    stages = []
    for k, (name, data_cfg, train_cfg, replay) in enumerate(planned):
        stage_dir = run_dir if len(planned) == 1 else run_dir / "stages" / f"{k + 1:02d}-{name}"
        tasks = prepare_tasks(cfg, data_cfg, tokenizer, run_dir / "prepared" / name, default_name=name)
        if len(planned) > 1 and data_cfg.tasks:  # eval-set names stay unique across stages
            for t in tasks:
                t.name = f"{name}.{t.name}"
        stages.append(Stage(name, stage_dir, data_cfg, train_cfg, replay, tasks))
    names = [t.name for s in stages for t in s.tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluation set names collide: {names}; give stages and tasks distinct names")
    return stages


def _replay_rows(earlier: TokenData, fraction: float, seed: int) -> TokenData:
    """``replay_count`` of the earlier stages' rows, drawn seeded without replacement."""
    import random

    from tunesmith.data.mixing import replay_count

    n = replay_count(len(earlier.input_ids), fraction)
    picks = sorted(random.Random(seed).sample(range(len(earlier.input_ids)), n))
    return TokenData([earlier.input_ids[i] for i in picks], [earlier.labels[i] for i in picks])


def _data_report(stages: list[Stage]) -> dict[str, Any]:
    return {
        "stages": {
            s.name: {t.name: t.data.report for t in s.tasks}
            for s in stages  # one stage: {run name: {task: report}}
        },
        # Not "label_names": that key means one label set to predict/evaluate; here there is one per task.
        "task_label_names": {t.name: t.data.label_names for s in stages for t in s.tasks},
    }


def _matrix_split(t: TaskData) -> str:
    return "validation" if t.data.validation is not None and len(t.data.validation) else "test"


def forgetting_matrix(
    stages: list[Stage], after: list[dict[str, Any]], base: dict[str, Any]
) -> dict[str, Any]:
    """Rows = after each stage, columns = every stage's eval sets; None where a set is not yet trained.

    ``forgetting`` per set: the best score it ever had after its own stage minus the final one (for
    perplexity the final minus the lowest); positive = forgotten.
    """
    sets = [(k, t) for k, s in enumerate(stages) for t in s.tasks]
    values = [
        [
            main_score(t.task, scores.get(t.name, {}).get(_matrix_split(t))) if j <= k else None
            for j, t in sets
        ]
        for k, scores in enumerate(after)
    ]
    forgetting: dict[str, float | None] = {}
    for col, (j, t) in enumerate(sets):
        seen = [row[col] for row in values[j:] if row[col] is not None]
        if len(seen) < len(values[j:]) or not seen or len(values) < len(stages):
            forgetting[t.name] = None
        elif MAIN_METRIC.get(t.task) == "perplexity":
            forgetting[t.name] = seen[-1] - min(seen)
        else:
            forgetting[t.name] = max(seen) - seen[-1]
    return {
        "rows": [s.name for s in stages[: len(after)]],
        "columns": [t.name for _, t in sets],
        "metric": {t.name: MAIN_METRIC.get(t.task, "loss") for _, t in sets},
        "split": {t.name: _matrix_split(t) for _, t in sets},
        "values": values,
        "base": [main_score(t.task, base.get(t.name, {}).get(_matrix_split(t))) for _, t in sets]
        if base
        else None,
        "forgetting": forgetting,
    }


def _combine_metrics(run_dir: Path, stages: list[Stage]) -> None:
    """The stages' metrics.jsonl as one run-level log (steps continue across stages) for the loss curves."""
    rows, offset = [], 0
    for s in stages:
        path = s.dir / "metrics.jsonl"
        if not path.exists():
            break
        stage_rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        rows += [{**r, "step": r.get("step", 0) + offset, "stage": s.name} for r in stage_rows]
        offset += max((r.get("step", 0) for r in stage_rows), default=0)
    write_jsonl_atomic(run_dir / "metrics.jsonl", rows)


def _train_stage(
    stage: Stage, k: int, model: Any, tokenizer: Any, rows: TokenData, cfg: RunConfig, resume: bool
) -> tuple[TrainResult | None, dict[str, Any] | None]:
    """(loop result, None), or for a stage finished earlier and ``resume``: (None, its stage.json)."""
    done = stage.dir / "stage.json"
    if resume and cfg.stages and len(cfg.stages) > 1 and done.exists():
        ckpt.restore_weights(stage.dir / "end", model)
        print(f"tunesmith: stage {stage.name} finished earlier; reloaded its end weights")
        return None, json.loads(done.read_text(encoding="utf-8"))
    print(f"tunesmith: stage {k + 1} ({stage.name}): {len(rows.input_ids)} training rows")
    result = train_loop(
        model,
        rows,
        validation_rows(stage.tasks),
        stage.train_cfg,
        seed=cfg.seed,
        run_dir=stage.dir,
        pad_id=tokenizer.pad_token_id,
        resume=resume,
        make_optimizer=optimizer_for(cfg.method),
    )
    return result, None


def train_stages(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train a multi-task or sequential run end to end; returns the summary (also in summary.json)."""
    from tunesmith.api import _load_start_model, seed_everything
    from tunesmith.methods import prepare_model, runner
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.runs import save_trained

    if runner(cfg.method.name) is not None:
        raise ConfigError(
            f"method {cfg.method.name} trains outside the training loop; data.tasks and stages need a loop "
            "method (lora, full, freeze, ...)"
        )
    if getattr(cfg.model, "head", "lm") != "lm":
        raise ConfigError(
            "model.head: classification is not supported with data.tasks or stages yet (each task would need "
            "its own head); use model.head: lm, which scores each task's labels by log-likelihood"
        )
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    stages = _prepare_stages(cfg, tokenizer, run_dir)
    write_json_atomic(run_dir / "data_report.json", _data_report(stages))
    all_sets = [t for s in stages for t in s.tasks]
    model = _load_start_model(cfg)
    t_eval = time.perf_counter()
    base = {}
    if cfg.eval.compare_base:
        base = cached_base_eval(run_dir / "base_eval_tasks.json", model, tokenizer, all_sets, cfg)
    before = _evidence_before(run_dir, model, tokenizer, all_sets[0], cfg)
    timings = {"base_eval_s": time.perf_counter() - t_eval, "train_s": 0.0, "tuned_eval_s": 0.0}
    seed_everything(cfg.seed)  # training randomness must not depend on whether the base was evaluated
    model = prepare_model(model, cfg.method)
    earlier = TokenData([], [])
    after: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    result: TrainResult | None = None
    for k, stage in enumerate(stages):
        own, mix_report = mix_tasks(stage.tasks, stage.data_cfg, cfg.seed + k)
        replayed = _replay_rows(earlier, stage.replay, cfg.seed + k) if stage.replay else TokenData([], [])
        rows = TokenData(own.input_ids + replayed.input_ids, own.labels + replayed.labels)
        stage_result, record = _train_stage(stage, k, model, tokenizer, rows, cfg, resume)
        earlier = TokenData(earlier.input_ids + own.input_ids, earlier.labels + own.labels)
        if record is None:
            assert stage_result is not None
            result = stage_result
            timings["train_s"] += stage_result.train_seconds
            if stage_result.interrupted:
                break
            t_eval = time.perf_counter()
            last = k == len(stages) - 1
            if len(stages) > 1:  # each stage's result stays loadable; end/ is what a resumed run reloads
                save_trained(model, tokenizer, stage.dir)
                ckpt.save_weights(stage.dir / "end", model)
            preds = (run_dir if last else stage.dir) / "predictions_tuned"
            sets = [t for s in stages[: k + 1] for t in s.tasks]
            record = _stage_record(
                stage, stage_result, mix_report, rows, replayed, sets, model, tokenizer, preds
            )
            timings["tuned_eval_s"] += time.perf_counter() - t_eval
            if len(stages) > 1:
                write_json_atomic(stage.dir / "stage.json", record)
        records.append(record)
        after.append(record["eval"])
    interrupted = result is not None and result.interrupted
    if len(stages) > 1:
        _combine_metrics(run_dir, stages)
    if not interrupted:
        save_trained(model, tokenizer, run_dir)
    timings["total_s"] = time.perf_counter() - t_start
    summary = _summary(cfg, model, stages, all_sets, base, after, records, result, timings, interrupted)
    if not interrupted and result is not None:
        _evidence_after(summary, run_dir, model, tokenizer, all_sets[0], cfg, before, result)
    write_json_atomic(run_dir / "summary.json", summary)
    from tunesmith.report.html import write_report

    write_report(run_dir)
    return summary


def evaluate_stages(model: Any, tokenizer: Any, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """A finished run's model on every task's / stage's own validation and test split (``tunesmith eval``).

    Returns ``{eval set: {split: metrics}}``.
    """
    stages = _prepare_stages(cfg, tokenizer, run_dir)
    return evaluate_tasks(model, tokenizer, [t for s in stages for t in s.tasks])


def _stage_record(
    stage: Stage,
    result: TrainResult,
    mix_report: dict[str, Any],
    rows: TokenData,
    replayed: TokenData,
    sets: list[TaskData],
    model: Any,
    tokenizer: Any,
    preds: Path,
) -> dict[str, Any]:
    """What summary.json keeps per stage; its ``eval`` covers every eval set up to this stage."""
    print(f"tunesmith: stage {stage.name}: evaluating {len(sets)} evaluation set(s)")
    return {
        "name": stage.name,
        "steps": result.steps,
        "train_rows": len(rows.input_ids),
        "replay_rows": len(replayed.input_ids),
        "mix": mix_report,
        "train_seconds": round(result.train_seconds, 2),
        "final_val_loss": result.final_val_loss,
        "eval": evaluate_tasks(model, tokenizer, sets, save_as=preds),
    }


def _summary(
    cfg: RunConfig,
    model: Any,
    stages: list[Stage],
    all_sets: list[TaskData],
    base: dict[str, Any],
    after: list[dict[str, Any]],
    records: list[dict[str, Any]],
    result: TrainResult | None,
    timings: dict[str, float],
    interrupted: bool,
) -> dict[str, Any]:
    from tunesmith.api import _versions
    from tunesmith.methods import count_parameters

    trainable, total = count_parameters(model)
    final = after[-1] if after and len(after) == len(stages) else {}
    evals = {
        f"{t.name}/{split}": ({"base": base.get(t.name, {}).get(split)} if base else {}) | {"tuned": m}
        for t in all_sets
        for split, m in final.get(t.name, {}).items()
    }
    kinds = sorted({t.task for t in all_sets})
    summary: dict[str, Any] = {
        "name": cfg.name,
        "status": "interrupted" if interrupted else "completed",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "task": kinds[0] if len(kinds) == 1 else "mixed",
        "trainable_params": trainable,
        "total_params": total,
        "eval": evals,
        "tasks": task_table(all_sets, base, final),
        "train": {
            "steps": sum(r["steps"] for r in records),
            "stages": len(records),
            "last_stage_steps": result.steps if result else None,
        },
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "peak_memory_mb": result.peak_memory_mb if result else None,
        "versions": _versions(),
        "data_hashes": {
            f"{t.name}/{k}": v.get("sha256")
            for t in all_sets
            for k, v in t.data.report.get("files", {}).items()
        },
    }
    if len(stages) > 1:
        summary["stages"] = [{k: v for k, v in r.items() if k != "eval"} for r in records]
        summary["forgetting_matrix"] = forgetting_matrix(stages, after, base)
    else:
        summary["mixing"] = records[0]["mix"] if records else {}
    return summary


def _no_icl(cfg: RunConfig) -> RunConfig:
    # In-context baselines compare one dataset's k-shot prompts with the tuned model; per task they would
    # cost a base evaluation per k and task, so multi-task and sequential runs skip them (gates.min_gain
    # then reports that no baseline was evaluated).
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"icl_shots": []})})


def _evidence_before(run_dir: Path, model: Any, tokenizer: Any, first: TaskData, cfg: RunConfig) -> Any:
    from tunesmith.evaluate.evidence import before_training

    return before_training(run_dir, model, tokenizer, first.data, first.task, _no_icl(cfg))


def _evidence_after(
    summary: dict[str, Any],
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    first: TaskData,
    cfg: RunConfig,
    before: Any,
    result: TrainResult,
) -> None:
    """Forgetting probes, overfitting flag and gates, as for a plain run."""
    from tunesmith.evaluate.evidence import after_training, apply_evidence

    sections = after_training(
        run_dir, model, tokenizer, first.data, first.task, _no_icl(cfg), before, {}, result
    )
    apply_evidence(summary, sections)
