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

import torch

from tunesmith.config import RunConfig
from tunesmith.data.preference import PreferenceData, prepare_preferences
from tunesmith.errors import ConfigError, DataError
from tunesmith.infer.batching import PairData, model_device
from tunesmith.methods import load_trained, optimizer_for
from tunesmith.methods.seq_cls import check_supported, prepare_head, start_model
from tunesmith.objective import DPOObjective, RewardObjective
from tunesmith.pipelines.base import Fit, Pipeline, Run, loop_summary, print_data_report, seed_everything
from tunesmith.pipelines.lm import load_start_model
from tunesmith.pipelines.preference import EVAL_SPLITS, PAD, preference_metrics, token_data
from tunesmith.runs import Summary, save_trained
from tunesmith.train.loop import train_loop
from tunesmith.train.preference import RewardLoss

LABELS = ["reward"]
"""The head's one output, named so the run loads as a (one-label) sequence classifier."""


@torch.no_grad()
def reward_metrics(
    model: Any, data: PairData, batch_size: int, center: float | None = None
) -> dict[str, float]:
    """Mean Bradley-Terry loss, pair accuracy and margin of a reward model over ``data``."""
    was_training = model.training
    model.eval()
    loss_fn, device, total = RewardLoss(center), model_device(model), 0.0
    for start in range(0, len(data), batch_size):
        batch = data.collate(list(range(start, min(start + batch_size, len(data)))), PAD)
        loss_sum, _ = loss_fn(model, {k: v.to(device) for k, v in batch.items()})
        total += float(loss_sum)
    model.train(was_training)
    stats = loss_fn.pop_stats()
    return {
        "loss": round(total / max(len(data), 1), 6),
        "pair_accuracy": stats["reward_accuracy"],
        "margin": stats["reward_margin"],
        "reward_chosen": stats["reward_chosen"],
        "reward_rejected": stats["reward_rejected"],
    }


def _objective(cfg: RunConfig) -> RewardObjective:
    assert isinstance(cfg.objective, RewardObjective)
    return cfg.objective


class RewardPipeline(Pipeline):
    """Pairs -> base LM's zero-shot preference -> scalar head trained by the loop -> pair accuracy."""

    name = "reward"
    seed_first = False  # seeded where the new head is initialised (start_model)

    def check(self, cfg: RunConfig) -> None:
        check_supported(
            cfg.model_copy(update={"model": cfg.model.model_copy(update={"head": "classification"})})
        )
        if cfg.train.packing:
            raise ConfigError(
                "objective reward scores whole answers; train.packing does not apply (set false)"
            )

    def resolve(self, cfg: RunConfig) -> RunConfig:
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"head": "classification"})})

    def prepare(self, run: Run) -> PreferenceData:
        data = prepare_preferences(run.cfg.data, run.tokenizer, run.cfg.seed, "preference")
        data.report["label_names"] = LABELS
        run.dir.write_data_report(data.report)
        print_data_report(data.report)
        if not len(data.train):
            raise DataError(f"{run.cfg.data.train}: no training pairs left (see data_report.json)")
        run.task = "reward"
        return data

    def start_model(self, run: Run, data: PreferenceData) -> Any:
        seed_everything(run.cfg.seed)
        return prepare_head(start_model(run.cfg, LABELS, run.tokenizer), run.cfg.method)

    def baselines(self, run: Run, model: Any, data: PreferenceData) -> dict[str, Any]:
        """The base LM's zero-shot preference on each evaluation split (loaded for this, then freed)."""
        splits = {n: token_data(s) for n in ("train", *EVAL_SPLITS) if (s := getattr(data, n)) and len(s)}
        lm_cfg = run.cfg.model_copy(update={"model": run.cfg.model.model_copy(update={"head": "lm"})})
        lm = load_start_model(lm_cfg)
        free = DPOObjective(loss="simpo")  # reference-free: only its prefers_chosen measure is used
        base = {
            n: {
                "pair_accuracy": preference_metrics(lm, splits[n], free, run.cfg.eval.batch_size)[
                    "prefers_chosen"
                ]
            }
            for n in EVAL_SPLITS
            if n in splits
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

        result = train_loop(
            model,
            splits["train"],
            val,
            cfg.train,
            seed=cfg.seed,
            run_dir=run.dir.path,
            pad_id=PAD,
            resume=run.resume,
            loss_fn=RewardLoss(center),
            val_metrics=val_metrics if val is not None else None,
            make_optimizer=optimizer_for(cfg.method),
        )
        run.timings["train_s"] = result.train_seconds
        return Fit(model, result, result.interrupted)

    def save(self, run: Run, fit: Fit) -> None:
        save_trained(fit.model, run.tokenizer, run.dir.path)

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

    def summarise(self, run: Run, fit: Fit, data: PreferenceData, evals: dict[str, Any]) -> Summary:
        assert fit.result is not None
        return loop_summary(run, fit.model, run.task, fit.result, evals, data)  # type: ignore[arg-type]


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Pair accuracy and margin of a finished reward run on its evaluation splits or on ``data``."""
    model, tokenizer, cfg = load_trained(run_dir)
    data_cfg = (
        cfg.data if data is None else cfg.data.model_copy(update={"validation": str(data), "test": None})
    )
    prepared = prepare_preferences(data_cfg, tokenizer, cfg.seed, "preference")
    splits = {n: token_data(s) for n in EVAL_SPLITS if (s := getattr(prepared, n)) is not None and len(s)}
    return {n: reward_metrics(model, d, cfg.eval.batch_size) for n, d in splits.items()}  # type: ignore[arg-type]


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "auto") -> Path:
    """Refused: a reward run scores answers to prompts, which a prediction file does not pair up."""
    raise ConfigError(
        f"{run_dir} is a reward model: `tunesmith evaluate {run_dir} --data PAIRS.jsonl` reports its pair "
        "accuracy and margin; to score completions use it as a grader (objective.grader: {type: score_model, "
        f"model: {run_dir}}})"
    )
