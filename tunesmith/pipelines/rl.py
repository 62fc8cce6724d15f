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
from tunesmith.data.preference import PreferenceData, PromptSplit
from tunesmith.errors import ConfigError
from tunesmith.evaluate.graders import build_grader
from tunesmith.infer.batching import PromptData
from tunesmith.infer.generate import generate_texts
from tunesmith.io import write_jsonl_atomic
from tunesmith.methods import prepare_model
from tunesmith.objective import GRPOObjective
from tunesmith.pipelines.base import Fit, Run, seed_everything
from tunesmith.pipelines.lm import load_start_model
from tunesmith.pipelines.objective_kind import (
    ObjectivePipeline,
    check_trains_the_lm,
    eval_splits,
    prepared_for_evaluation,
)
from tunesmith.pipelines.scoring import reward_scorer
from tunesmith.train.grpo import Grade, GRPOLoss

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


class GRPOPipeline(ObjectivePipeline):
    """Prompts -> base graded -> the loop with the GRPO loss -> tuned graded."""

    name = "grpo"
    task = "rl"

    def shape(self, cfg: RunConfig) -> str:
        return "prompt"

    def check(self, cfg: RunConfig) -> None:
        check_trains_the_lm(cfg)
        if _objective(cfg).beta > 0 and cfg.method.name in NO_REFERENCE_METHODS:
            raise ConfigError(
                f"objective.beta > 0 needs a reference: with method {cfg.method.name} none is kept (it "
                "would be a second model in memory); use lora/qlora (the base with the adapter off is the "
                "reference) or set objective.beta: 0"
            )

    def start_model(self, run: Run, data: PreferenceData) -> Any:
        return load_start_model(run.cfg)

    def baselines(self, run: Run, model: Any, data: PreferenceData) -> dict[str, Any]:
        grade = make_grade(_objective(run.cfg))
        base = {}
        for name, split in eval_splits(data).items():
            objective = _objective(run.cfg)
            base[name], rows = graded_answers(model, run.tokenizer, split, grade, objective, run.cfg)
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
        # No validation pass mid-run: held-out prompts are graded after training (each pass generates).
        return self.train_with(run, model, prompts, None, loss, pad_id=run.tokenizer.pad_token_id)

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


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Grader scores of a finished grpo run's greedy answers on its evaluation splits or on ``data``."""
    model, tokenizer, cfg, prepared = prepared_for_evaluation(run_dir, data, "prompt")
    grade = make_grade(_objective(cfg))
    return {
        name: graded_answers(model, tokenizer, split, grade, _objective(cfg), cfg)[0]  # type: ignore[arg-type]
        for name, split in eval_splits(prepared).items()
    }
