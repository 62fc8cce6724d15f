"""The ``grpo`` run kind: reinforcement fine-tuning from a grader (GRPO, or RLOO with
``objective.advantage: rloo``) through the one loop; the loss samples and grades its own completions.

    tunesmith train recipes/grpo.yaml

Data: prompt rows (chat ending with the user's turn, or ``prompt``) plus any fields the grader reads
(``{{item.answer}}``). Evaluation: each held-out prompt answered greedily and graded, base and tuned; the
graded answers go to ``predictions_{base,tuned}_<split>.jsonl``. Training logs per step the mean reward, the
time spent generating and grading (``generate_s``, ``grade_s``) and the whole step (``step_s``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.preference import PreferenceData, PromptSplit, prepare_preferences
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.graders import build_grader
from tunesmith.infer.batching import PromptData
from tunesmith.infer.generate import generate_texts
from tunesmith.io import write_jsonl_atomic
from tunesmith.methods import load_trained, optimizer_for, prepare_model
from tunesmith.objective import GRPOObjective
from tunesmith.pipelines.base import Fit, Pipeline, Run, loop_summary, print_data_report, seed_everything
from tunesmith.pipelines.lm import load_start_model
from tunesmith.pipelines.scoring import reward_scorer
from tunesmith.runs import Summary, save_trained
from tunesmith.train.grpo import Grade, GRPOLoss
from tunesmith.train.loop import train_loop

EVAL_SPLITS = ("validation", "test")
NO_REFERENCE_METHODS = ("full", "freeze", "adapter")
"""Methods without a switchable adapter: the base is gone once they train, so beta > 0 has no reference."""


def item_of(example: Any) -> dict[str, Any]:
    """What a grader sees as ``item``: the row's extra fields plus its prompt ``messages``."""
    return {**example.extra, "messages": example.messages}


def make_grade(objective: GRPOObjective) -> Any:
    """The objective's grader as ``(completions, items) -> scores``, plus the grader for error reports."""
    grader = build_grader(objective.grader, load_score_model=reward_scorer)

    def grade(texts: list[str], items: list[dict[str, Any]]) -> list[float]:
        return [g.score for g in grader(texts, items)]

    return grade


def graded_answers(
    model: Any, tokenizer: Any, split: PromptSplit, grade: Grade, objective: GRPOObjective, cfg: RunConfig
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy answers to ``split``'s prompts (capped by ``eval.max_examples``), graded: mean score, share of
    full scores (>= 1) and the answers."""
    n = min(len(split), cfg.eval.max_examples or len(split))
    texts = generate_texts(
        model, tokenizer, split.prompt_ids[:n], objective.max_new_tokens, cfg.eval.batch_size
    )
    items = [item_of(ex) for ex in split.examples[:n]]
    scores = grade(texts, items)
    metrics = {
        "score": round(sum(scores) / max(n, 1), 6),
        "full_score_share": round(sum(s >= 1.0 for s in scores) / max(n, 1), 6),
        "examples": n,
    }
    rows = [{"completion": t, "score": s} for t, s in zip(texts, scores, strict=True)]
    return metrics, rows


def _objective(cfg: RunConfig) -> GRPOObjective:
    assert isinstance(cfg.objective, GRPOObjective)
    return cfg.objective


class GRPOPipeline(Pipeline):
    """Prompts -> base graded -> the loop with the GRPO loss -> tuned graded."""

    name = "grpo"

    def check(self, cfg: RunConfig) -> None:
        if cfg.model.head != "lm" or cfg.method.name == "feature_extraction":
            raise ConfigError("objective grpo trains the LM itself: use model.head: lm and a training method")
        if _objective(cfg).beta > 0 and cfg.method.name in NO_REFERENCE_METHODS:
            raise ConfigError(
                f"objective.beta > 0 needs a reference: with method {cfg.method.name} none is kept (it "
                "would be a second model in memory); use lora/qlora (the base with the adapter off is the "
                "reference) or set objective.beta: 0"
            )

    def prepare(self, run: Run) -> PreferenceData:
        data = prepare_preferences(run.cfg.data, run.tokenizer, run.cfg.seed, "prompt")
        run.dir.write_data_report(data.report)
        print_data_report(data.report)
        if not len(data.train):
            raise DataError(f"{run.cfg.data.train}: no prompts left (see data_report.json)")
        run.task = "rl"
        return data

    def start_model(self, run: Run, data: PreferenceData) -> Any:
        return load_start_model(run.cfg)

    def baselines(self, run: Run, model: Any, data: PreferenceData) -> dict[str, Any]:
        grade = make_grade(_objective(run.cfg))
        base = {}
        for name in EVAL_SPLITS:
            split = getattr(data, name)
            if split is not None and len(split):
                base[name], rows = graded_answers(
                    model, run.tokenizer, split, grade, _objective(run.cfg), run.cfg
                )
                write_jsonl_atomic(f"{run.dir.predictions('base')}_{name}.jsonl", rows)
        return {"base": base, "grade": grade}

    def fit(self, run: Run, model: Any, data: PreferenceData) -> Fit:
        cfg, objective = run.cfg, _objective(run.cfg)
        seed_everything(cfg.seed)
        model = prepare_model(model, cfg.method)
        train = data.train
        assert isinstance(train, PromptSplit)
        loss = GRPOLoss(objective, run.before["grade"], [item_of(ex) for ex in train.examples], run.tokenizer)
        prompts = PromptData(train.prompt_ids, [], objective.num_generations, objective.max_new_tokens)
        result = train_loop(
            model,
            prompts,
            None,  # held-out prompts are graded after training: mid-run, each pass would cost a generation
            cfg.train,
            seed=cfg.seed,
            run_dir=run.dir.path,
            pad_id=run.tokenizer.pad_token_id,
            resume=run.resume,
            loss_fn=loss,
            make_optimizer=optimizer_for(cfg.method),
        )
        run.timings["train_s"] = result.train_seconds
        return Fit(model, result, result.interrupted)

    def save(self, run: Run, fit: Fit) -> None:
        save_trained(fit.model, run.tokenizer, run.dir.path)

    def evaluate(self, run: Run, fit: Fit, data: PreferenceData, before: dict[str, Any]) -> dict[str, Any]:
        t_eval, evals = time.perf_counter(), {}
        for name, base in before["base"].items():
            tuned, rows = graded_answers(
                fit.model, run.tokenizer, getattr(data, name), before["grade"], _objective(run.cfg), run.cfg
            )
            write_jsonl_atomic(f"{run.dir.predictions('tuned')}_{name}.jsonl", rows)
            evals[name] = {"base": base, "tuned": tuned}
        run.timings["tuned_eval_s"] = time.perf_counter() - t_eval
        return evals

    def summarise(self, run: Run, fit: Fit, data: PreferenceData, evals: dict[str, Any]) -> Summary:
        assert fit.result is not None
        return loop_summary(run, fit.model, run.task, fit.result, evals, data)  # type: ignore[arg-type]


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Grader scores of a finished grpo run's greedy answers on its evaluation splits or on ``data``."""
    model, tokenizer, cfg = load_trained(run_dir)
    data_cfg = (
        cfg.data if data is None else cfg.data.model_copy(update={"validation": str(data), "test": None})
    )
    prepared = prepare_preferences(data_cfg, tokenizer, cfg.seed, "prompt")
    grade, out = make_grade(_objective(cfg)), {}
    for name in EVAL_SPLITS:
        split = getattr(prepared, name)
        if split is not None and len(split):
            out[name], _ = graded_answers(model, tokenizer, split, grade, _objective(cfg), cfg)
    return out
