"""The ``staged`` run kind: sequential and multi-task runs, ``stages:`` trained one after another, each from
the previous result.

A config with ``stages`` or ``data.tasks`` runs as this kind. A stage's ``data``/``train`` sections
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
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tunesmith.config import DataConfig, RunConfig, TrainConfig, format_errors
from tunesmith.data.mixing import replay_count
from tunesmith.errors import ConfigError
from tunesmith.evaluate.evidence import after_training, before_training
from tunesmith.infer.batching import TokenData
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.methods import METHODS, count_parameters, load_trained, optimizer_for, prepare_model
from tunesmith.pipelines.base import Fit, Pipeline, Run, data_hashes, seed_everything, summarise
from tunesmith.pipelines.lm import evaluate as evaluate_lm
from tunesmith.pipelines.lm import load_start_model
from tunesmith.pipelines.multitask import (
    MAIN_METRIC,
    TaskData,
    cached_base_eval,
    evaluate_tasks,
    main_score,
    mix_tasks,
    prepare_tasks,
    task_table,
    validation_rows,
)
from tunesmith.runs import RunDir, Summary, save_trained
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.hooks import LoopHooks
from tunesmith.train.loop import TrainResult, train_loop


@dataclass
class Stage:
    name: str
    dir: RunDir
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
        raise ConfigError(format_errors(err, where)) from None


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


def _prepare_stages(cfg: RunConfig, tokenizer: Any, run_dir: RunDir) -> list[Stage]:
    """Every stage's data, prepared before any training so a bad file fails in seconds, not hours."""
    planned = plan_stages(cfg)
    stages = []
    for k, (name, data_cfg, train_cfg, replay) in enumerate(planned):
        stage_dir = run_dir if len(planned) == 1 else run_dir.stage(k, name)
        tasks = prepare_tasks(cfg, data_cfg, tokenizer, run_dir.prepared / name, default_name=name)
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


def _combine_metrics(run_dir: RunDir, stages: list[Stage]) -> None:
    """The stages' metrics.jsonl as one run-level log (steps continue across stages) for the loss curves."""
    rows, offset = [], 0
    for s in stages:
        if not s.dir.metrics.exists():
            break
        stage_rows = s.dir.read_metrics()
        rows += [{**r, "step": r.get("step", 0) + offset, "stage": s.name} for r in stage_rows]
        offset += max((r.get("step", 0) for r in stage_rows), default=0)
    write_jsonl_atomic(run_dir.metrics, rows)


def _train_stage(
    stage: Stage,
    k: int,
    model: Any,
    tokenizer: Any,
    rows: TokenData,
    cfg: RunConfig,
    resume: bool,
    hooks: LoopHooks | None = None,
) -> tuple[TrainResult | None, dict[str, Any] | None]:
    """(loop result, None), or for a stage finished earlier and ``resume``: (None, its stage.json)."""
    done = stage.dir.stage_record
    if resume and cfg.stages and len(cfg.stages) > 1 and done.exists():
        ckpt.restore_weights(stage.dir.stage_end, model)
        print(f"tunesmith: stage {stage.name} finished earlier; reloaded its end weights")
        return None, json.loads(done.read_text(encoding="utf-8"))
    print(f"tunesmith: stage {k + 1} ({stage.name}): {len(rows.input_ids)} training rows")
    result = train_loop(
        model,
        rows,
        validation_rows(stage.tasks),
        stage.train_cfg,
        seed=cfg.seed,
        run_dir=stage.dir.path,
        pad_id=tokenizer.pad_token_id,
        resume=resume,
        make_optimizer=optimizer_for(cfg.method),
        hooks=hooks,
    )
    return result, None


class StagedPipeline(Pipeline):
    """Multi-task and sequential runs: every stage's data first, then the stages in order on one model."""

    name = "staged"

    def check(self, cfg: RunConfig) -> None:
        if cfg.method.name not in METHODS:
            raise ConfigError(
                f"method {cfg.method.name} trains outside the training loop; data.tasks and stages need a "
                "loop method (lora, full, freeze, ...)"
            )
        if getattr(cfg.model, "head", "lm") != "lm":
            raise ConfigError(
                "model.head: classification is not supported with data.tasks or stages yet (each task would "
                "need its own head); use model.head: lm, which scores each task's labels by log-likelihood"
            )

    def prepare(self, run: Run) -> list[Stage]:
        stages = _prepare_stages(run.cfg, run.tokenizer, run.dir)
        run.dir.write_data_report(_data_report(stages))
        return stages

    def start_model(self, run: Run, stages: list[Stage]) -> Any:
        return load_start_model(run.cfg)

    def baselines(self, run: Run, model: Any, stages: list[Stage]) -> dict[str, Any]:
        cfg, all_sets = run.cfg, [t for s in stages for t in s.tasks]
        base = {}
        if cfg.eval.compare_base:
            base = cached_base_eval(run.dir.base_eval_tasks, model, run.tokenizer, all_sets, cfg)
        first = all_sets[0]
        evidence = before_training(run.dir.path, model, run.tokenizer, first.data, first.task, _no_icl(cfg))
        return {"base": base, "evidence": evidence}

    def fit(self, run: Run, model: Any, stages: list[Stage]) -> Fit:
        cfg, tokenizer = run.cfg, run.tokenizer
        run.timings.update(train_s=0.0, tuned_eval_s=0.0)
        seed_everything(cfg.seed)  # training randomness must not depend on whether the base was evaluated
        model = prepare_model(model, cfg.method)
        earlier = TokenData([], [])
        after: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        result: TrainResult | None = None
        for k, stage in enumerate(stages):
            own, mix_report = mix_tasks(stage.tasks, stage.data_cfg, cfg.seed + k)
            replayed = TokenData([], [])
            if stage.replay:
                replayed = _replay_rows(earlier, stage.replay, cfg.seed + k)
            rows = TokenData(own.input_ids + replayed.input_ids, own.labels + replayed.labels)
            if k > 0:
                # A stage's randomness (dropout, ...) depends on the seed and the stage alone, not on what
                # ran before it in this process: a resumed run reloads finished stages instead of training
                # and evaluating them, and must start the next one where the uninterrupted run did.
                seed_everything(cfg.seed + k)
            stage_result, record = _train_stage(
                stage,
                k,
                model,
                tokenizer,
                rows,
                cfg,
                run.resume,
                LoopHooks(on_log=run.hooks.on_log),  # trackers only: a stage's steps restart, no pruning
            )
            earlier = TokenData(earlier.input_ids + own.input_ids, earlier.labels + own.labels)
            if record is None:
                assert stage_result is not None
                result = stage_result
                run.timings["train_s"] += stage_result.train_seconds
                if stage_result.interrupted:
                    break
                t_eval = time.perf_counter()
                last = k == len(stages) - 1
                if len(stages) > 1:  # each stage's result stays loadable; end/ is what a resumed run reloads
                    save_trained(model, tokenizer, stage.dir.path)
                    ckpt.save_weights(stage.dir.stage_end, model)
                preds = (run.dir if last else stage.dir).predictions("tuned")
                sets = [t for s in stages[: k + 1] for t in s.tasks]
                record = _stage_record(
                    stage, stage_result, mix_report, rows, replayed, sets, model, tokenizer, preds
                )
                run.timings["tuned_eval_s"] += time.perf_counter() - t_eval
                if len(stages) > 1:
                    write_json_atomic(stage.dir.stage_record, record)
            records.append(record)
            after.append(record["eval"])
        interrupted = result is not None and result.interrupted
        if len(stages) > 1:
            _combine_metrics(run.dir, stages)
        return Fit(model, result, interrupted, {"after": after, "records": records})

    def save(self, run: Run, fit: Fit) -> None:
        save_trained(fit.model, run.tokenizer, run.dir.path)

    def summarise(self, run: Run, fit: Fit, stages: list[Stage], evals: dict[str, Any]) -> Summary:
        return _summary(run, fit, stages)

    def evidence(self, run: Run, fit: Fit, stages: list[Stage], before: Any, evals: dict[str, Any]) -> Any:
        """Forgetting probes, overfitting flag and gates, as for a plain run (on the first eval set)."""
        if fit.result is None:
            return None
        first = stages[0].tasks[0]
        return after_training(
            run.dir.path,
            fit.model,
            run.tokenizer,
            first.data,
            first.task,
            _no_icl(run.cfg),
            before["evidence"],
            {},
            fit.result,
        )


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished staged run: on ``data`` as an lm run, else on every eval set's own splits."""
    if data is not None:
        return evaluate_lm(run_dir, data)
    model, tokenizer, cfg = load_trained(run_dir)
    return evaluate_stages(model, tokenizer, cfg, RunDir(run_dir))


def evaluate_stages(model: Any, tokenizer: Any, cfg: RunConfig, run_dir: RunDir) -> dict[str, Any]:
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


def _summary(run: Run, fit: Fit, stages: list[Stage]) -> Summary:
    cfg, base = run.cfg, run.before["base"]
    after, records, result = fit.extra["after"], fit.extra["records"], fit.result
    all_sets = [t for s in stages for t in s.tasks]
    final = after[-1] if after and len(after) == len(stages) else {}
    evals = {
        f"{t.name}/{split}": ({"base": base.get(t.name, {}).get(split)} if base else {}) | {"tuned": m}
        for t in all_sets
        for split, m in final.get(t.name, {}).items()
    }
    kinds = sorted({t.task for t in all_sets})
    train = {
        "steps": sum(r["steps"] for r in records),
        "stages": len(records),
        "last_stage_steps": result.steps if result else None,
    }
    hashes = {f"{t.name}/{k}": v for t in all_sets for k, v in data_hashes(t.data).items()}
    summary = summarise(
        cfg,
        task=kinds[0] if len(kinds) == 1 else "mixed",
        params=count_parameters(fit.model),
        evals=evals,
        train=train,
        timings=run.timings,
        peak_memory_mb=result.peak_memory_mb if result else None,
        hashes=hashes,
        interrupted=fit.interrupted,
        before_train={"tasks": task_table(all_sets, base, final)},
    )
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
