"""The ``reward`` run kind: a scalar reward model trained on preference pairs (Bradley-Terry), and the scorer
that lets graders (``score_model``) and DPO evaluation use it.

    tunesmith train recipes/reward.yaml

The model is the LLM with a one-output ``score`` head on its last token (a sequence classifier with the one
label ``reward``; config.yaml records ``model.head: classification``, so stock transformers loads ``model/``
or PEFT ``adapter/``). Evaluation: held-out pair accuracy (chosen scored above rejected) and mean margin;
the base is the untouched LM's zero-shot preference (its per-token log-prob of the chosen answer above the
rejected one's), since the new head itself starts random.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.preference import PreferenceData
from tunesmith.errors import ConfigError
from tunesmith.infer.batching import PairData
from tunesmith.methods.seq_cls import check_supported, prepare_head, start_model
from tunesmith.objective import DPOObjective, RewardObjective
from tunesmith.pipelines.base import Fit, Run, seed_everything
from tunesmith.pipelines.lm import load_start_model
from tunesmith.pipelines.objective_kind import (
    ObjectivePipeline,
    eval_splits,
    prepared_for_evaluation,
)
from tunesmith.pipelines.preference import PAD, loop_splits, loss_pass, preference_metrics, token_data
from tunesmith.train.preference import RewardLoss

LABELS = ["reward"]
"""The head's one output, named so the run loads as a (one-label) sequence classifier."""


def reward_metrics(
    model: Any, data: PairData, batch_size: int, center: float | None = None
) -> dict[str, float]:
    """Mean Bradley-Terry loss, pair accuracy and margin of a reward model over ``data``."""
    stats = loss_pass(model, data, RewardLoss(center), batch_size)
    return {
        "loss": stats["loss"],
        "pair_accuracy": stats["reward_accuracy"],
        "margin": stats["reward_margin"],
        "reward_chosen": stats["reward_chosen"],
        "reward_rejected": stats["reward_rejected"],
    }


def _objective(cfg: RunConfig) -> RewardObjective:
    assert isinstance(cfg.objective, RewardObjective)
    return cfg.objective


class RewardPipeline(ObjectivePipeline):
    """Pairs -> base LM's zero-shot preference -> scalar head trained by the loop -> pair accuracy."""

    name = "reward"
    task = "reward"
    labels = LABELS
    seed_first = False  # seeded where the new head is initialised (start_model)

    def check(self, cfg: RunConfig) -> None:
        check_supported(self.resolve(cfg))
        super().check(cfg)

    def resolve(self, cfg: RunConfig) -> RunConfig:
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"head": "classification"})})

    def shape(self, cfg: RunConfig) -> str:
        return "preference"

    def start_model(self, run: Run, data: PreferenceData) -> Any:
        seed_everything(run.cfg.seed)
        return prepare_head(start_model(run.cfg, LABELS, run.tokenizer), run.cfg.method)

    def baselines(self, run: Run, model: Any, data: PreferenceData) -> dict[str, Any]:
        """The base LM's zero-shot preference on each evaluation split (loaded for this, then freed)."""
        splits = loop_splits(data)
        lm_cfg = run.cfg.model_copy(update={"model": run.cfg.model.model_copy(update={"head": "lm"})})
        lm = load_start_model(lm_cfg)
        free = DPOObjective(loss="simpo")  # reference-free: only its prefers_chosen measure is used
        batch_size = run.cfg.eval.batch_size
        base = {
            n: {"pair_accuracy": preference_metrics(lm, split, free, batch_size)["prefers_chosen"]}
            for n, split in splits.items()
            if n != "train"
        }
        del lm
        return {"splits": splits, "base": base}

    def fit(self, run: Run, model: Any, data: PreferenceData) -> Fit:
        cfg, splits = run.cfg, run.before["splits"]
        val = splits.get("validation")
        center = _objective(cfg).center_rewards

        def val_metrics(m: Any, batch_size: int) -> dict[str, float]:
            metrics = reward_metrics(m, val, batch_size, center)
            return {"val_loss": metrics.pop("loss"), **{f"val_{k}": v for k, v in metrics.items()}}

        return self.train_with(run, model, splits["train"], val, RewardLoss(center), val_metrics, PAD)

    def evaluate(self, run: Run, fit: Fit, data: PreferenceData, before: dict[str, Any]) -> dict[str, Any]:
        t_eval = time.perf_counter()
        center = _objective(run.cfg).center_rewards
        evals = {
            n: {
                "base": base,
                "tuned": reward_metrics(fit.model, before["splits"][n], run.cfg.eval.batch_size, center),
            }
            for n, base in before["base"].items()
        }
        run.timings["tuned_eval_s"] = time.perf_counter() - t_eval
        return evals


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Pair accuracy and margin of a finished reward run on its evaluation splits or on ``data``."""
    model, _, cfg, prepared = prepared_for_evaluation(run_dir, data, "preference")
    center = _objective(cfg).center_rewards
    return {
        n: reward_metrics(model, token_data(s), cfg.eval.batch_size, center)  # type: ignore[arg-type]
        for n, s in eval_splits(prepared).items()
    }


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "auto") -> Path:
    """Refused: a reward run scores answers to prompts, which a prediction file does not pair up."""
    raise ConfigError(
        f"{run_dir} is a reward model: `tunesmith evaluate {run_dir} --data PAIRS.jsonl` reports its pair "
        "accuracy and margin; to score completions use it as a grader (objective.grader: {type: score_model, "
        f"model: {run_dir}}})"
    )
