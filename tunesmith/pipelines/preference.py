"""The ``dpo`` run kind: direct preference optimisation (sigmoid, ipo, hinge, simpo, orpo) on preference pairs
and kto on unpaired good/bad completions, through the one loop with a preference loss.

    tunesmith train recipes/dpo.yaml                              # DPO with LoRA on orca-dpo-pairs
    tunesmith train recipes/dpo.yaml --set objective.loss=simpo   # a variant

The reference log-probs are computed once, by the start model before the method wraps it, and cached in the
run directory (``reference_logps.safetensors``, keyed by model and token ids): while the policy trains no
reference model is in memory, and ``--resume`` or a re-run reads the cache instead of recomputing. With LoRA
the start model *is* the reference (a new adapter changes nothing until it trains), so there is no copy.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tunesmith.config import RunConfig
from tunesmith.data.preference import (
    PairSplit,
    PreferenceData,
    UnpairedSplit,
    render_preference_prompt,
)
from tunesmith.faults import fault_point
from tunesmith.infer.batching import PairData, TokenData, UnpairedData, model_device
from tunesmith.infer.generate import generate_texts
from tunesmith.infer.logprobs import logps_of_rows
from tunesmith.io import write_bytes_atomic, write_jsonl_atomic
from tunesmith.methods import prepare_model
from tunesmith.objective import DPOObjective
from tunesmith.pipelines.base import Fit, Run, seed_everything
from tunesmith.pipelines.lm import load_start_model
from tunesmith.pipelines.objective_kind import (
    ObjectivePipeline,
    check_trains_the_lm,
    eval_splits,
    prepared_for_evaluation,
)
from tunesmith.pipelines.scoring import judged_win_rate
from tunesmith.runs import read_run_config
from tunesmith.train.preference import PreferenceLoss

REFERENCE_FREE = ("simpo", "orpo")
PAD = 0
"""Padding id of preference batches: any id works, the attention mask and -100 labels hide it."""


def token_data(split: PairSplit | UnpairedSplit) -> PairData | UnpairedData:
    """A prepared split as the loop's rows (pairs, or unpaired rows with their desirability)."""
    if isinstance(split, PairSplit):
        return PairData(split.chosen_ids, split.chosen_labels, split.rejected_ids, split.rejected_labels)
    return UnpairedData(split.input_ids, split.labels, split.desirable)


def loop_splits(data: PreferenceData) -> dict[str, PairData | UnpairedData]:
    """``train`` and the non-empty evaluation splits as the loop's rows."""
    return {"train": token_data(data.train), **{n: token_data(s) for n, s in eval_splits(data).items()}}


def _rows(data: TokenData) -> tuple[list[list[int]], list[list[int]]]:
    """Every row whose reference log-prob is needed: chosen then rejected for pairs."""
    if isinstance(data, PairData):
        return data.input_ids + data.rejected_ids, data.labels + data.rejected_labels
    return data.input_ids, data.labels


def _reference_key(cfg: RunConfig, splits: dict[str, TokenData]) -> str:
    """What the reference log-probs depend on: the start model and every token of every row."""
    digest = hashlib.sha256(
        json.dumps([cfg.model.model_dump(), cfg.init_from, cfg.method.name], sort_keys=True).encode()
    )
    for name in sorted(splits):
        digest.update(name.encode())
        digest.update(json.dumps(_rows(splits[name])).encode())
    return digest.hexdigest()


def _set_reference(data: TokenData, logps: list[float]) -> None:
    if isinstance(data, PairData):
        half = len(data.input_ids)
        data.ref_chosen, data.ref_rejected = logps[:half], logps[half:]
    elif isinstance(data, UnpairedData):
        data.ref = logps


def attach_reference(
    path: Path | None, cfg: RunConfig, splits: dict[str, TokenData], reference: Callable[[], Any]
) -> bool:
    """Give every split its reference log-probs, from the cache at ``path`` or computed by ``reference()``
    (the start model) and cached there (``path`` None: not cached). Returns True when they were computed."""
    key = _reference_key(cfg, splits)
    if path is not None and path.exists():
        with safetensors.safe_open(str(path), "pt") as cached:
            if (cached.metadata() or {}).get("key") == key:
                for name, data in splits.items():
                    _set_reference(data, cached.get_tensor(name).tolist())
                return False
    model = reference()
    print("tunesmith: computing the reference log-probs once (cached in the run directory)")
    tensors = {}
    for name, data in splits.items():
        ids, labels = _rows(data)
        logps, _ = logps_of_rows(model, ids, labels, PAD, cfg.eval.batch_size)
        _set_reference(data, logps)
        tensors[name] = torch.tensor(logps, dtype=torch.float64)
    if path is not None:
        write_bytes_atomic(path, safetensors.torch.save(tensors, metadata={"key": key}))
    return True


@torch.no_grad()
def loss_pass(model: Any, data: TokenData, loss_fn: Any, batch_size: int) -> dict[str, float]:
    """One pass of a preference loss over ``data`` without gradients: its mean per example (``loss``) and
    the measurements it keeps (``loss_fn.pop_stats()``)."""
    was_training = model.training
    model.eval()
    device, total = model_device(model), 0.0
    for start in range(0, len(data), batch_size):
        batch = data.collate(list(range(start, min(start + batch_size, len(data)))), PAD)
        loss_sum, _ = loss_fn(model, {k: v.to(device) for k, v in batch.items()})
        total += float(loss_sum)
        fault_point("eval.batch")  # test-only: the crash tests kill a run here, mid-evaluation
    model.train(was_training)
    return {"loss": round(total / max(len(data), 1), 6), **loss_fn.pop_stats()}


def preference_metrics(
    model: Any, data: TokenData, objective: DPOObjective, batch_size: int
) -> dict[str, float]:
    """Mean loss and the loss's measurements over ``data`` (pairs: reward accuracy, margin, chosen/rejected
    rewards and log-probs, and ``prefers_chosen``, the share of pairs whose chosen answer has the higher
    per-token log-prob: the base model's zero-shot preference, comparable before and after training)."""
    return loss_pass(model, data, PreferenceLoss(objective), batch_size)


def _val_metrics(data: TokenData, objective: DPOObjective) -> Callable[[Any, int], dict[str, float]]:
    def scores(model: Any, batch_size: int) -> dict[str, float]:
        metrics = preference_metrics(model, data, objective, batch_size)
        return {"val_loss": metrics.pop("loss"), **{f"val_{k}": v for k, v in metrics.items()}}

    return scores


def judge_prompts(run: Run, examples: list[Any]) -> dict[str, Any]:
    """The validation prompts the judge compares answers to (``eval.max_examples`` of them at most)."""
    examples = examples[: run.cfg.eval.max_examples or len(examples)]
    prompts = [render_preference_prompt(ex, run.tokenizer, run.cfg.data.system_prompt) for ex in examples]
    return {"prompts": prompts, "items": [{"messages": ex.messages} for ex in examples]}


def answer(run: Run, model: Any, prompts: list[list[int]], which: str) -> list[str]:
    """Greedy answers to ``prompts``, also written to ``predictions_<which>_judged.jsonl``."""
    texts = generate_texts(
        model, run.tokenizer, prompts, run.cfg.eval.max_new_tokens, run.cfg.eval.batch_size
    )
    write_jsonl_atomic(f"{run.dir.predictions(which)}_judged.jsonl", [{"prediction": t} for t in texts])
    return texts


def _objective(cfg: RunConfig) -> DPOObjective:
    assert isinstance(cfg.objective, DPOObjective)
    return cfg.objective


def shape_of(cfg: RunConfig) -> str:
    return "unpaired" if _objective(cfg).loss == "kto" else "preference"


class PreferencePipeline(ObjectivePipeline):
    """Preference pairs (or kto rows) -> reference log-probs once -> the loop with a preference loss."""

    name = "dpo"

    def check(self, cfg: RunConfig) -> None:
        check_trains_the_lm(cfg)
        super().check(cfg)

    def shape(self, cfg: RunConfig) -> str:
        return shape_of(cfg)

    def start_model(self, run: Run, data: PreferenceData) -> Any:
        return load_start_model(run.cfg)

    def baselines(self, run: Run, model: Any, data: PreferenceData) -> dict[str, Any]:
        """Reference log-probs of every split (the start model is the reference), then the start model's
        numbers on the evaluation splits."""
        splits = loop_splits(data)
        objective = _objective(run.cfg)
        if objective.loss not in REFERENCE_FREE:
            attach_reference(run.dir.reference_logps, run.cfg, splits, lambda: model)
        base = {
            name: preference_metrics(model, split, objective, run.cfg.eval.batch_size)
            for name, split in splits.items()
            if name != "train"
        }
        judged = None
        if run.cfg.eval.judge and data.validation is not None and len(data.validation):
            judged = judge_prompts(run, data.validation.examples)
            judged["base"] = answer(run, model, judged["prompts"], "base")
        return {"splits": splits, "base": base, "judged": judged}

    def fit(self, run: Run, model: Any, data: PreferenceData) -> Fit:
        cfg, splits = run.cfg, run.before["splits"]
        seed_everything(cfg.seed)
        model = prepare_model(model, cfg.method)
        val = splits.get("validation")
        loss, scores = PreferenceLoss(_objective(cfg)), _val_metrics(val, _objective(cfg)) if val else None
        return self.train_with(run, model, splits["train"], val, loss, scores, PAD)

    def evaluate(self, run: Run, fit: Fit, data: PreferenceData, before: dict[str, Any]) -> dict[str, Any]:
        t_eval = time.perf_counter()
        evals = {
            name: {
                "base": metrics,
                "tuned": preference_metrics(
                    fit.model, before["splits"][name], _objective(run.cfg), run.cfg.eval.batch_size
                ),
            }
            for name, metrics in before["base"].items()
        }
        judged = before["judged"]
        if judged is not None:
            tuned = answer(run, fit.model, judged["prompts"], "tuned")
            evals["validation"]["judged"] = judged_win_rate(
                run.cfg.eval.judge, judged["items"], judged["base"], tuned
            )
        run.timings["tuned_eval_s"] = time.perf_counter() - t_eval
        return evals


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Preference metrics of a finished dpo run on its own evaluation splits or on ``data`` (any preference
    file), with the reference log-probs computed by the start model (another file: not the run's cache)."""
    cfg = read_run_config(run_dir)
    model, _, cfg, prepared = prepared_for_evaluation(run_dir, data, shape_of(cfg))
    objective = _objective(cfg)
    splits = {n: token_data(s) for n, s in eval_splits(prepared).items()}
    if objective.loss not in REFERENCE_FREE:
        attach_reference(None, cfg, splits, lambda: load_start_model(cfg))
    return {name: preference_metrics(model, d, objective, cfg.eval.batch_size) for name, d in splits.items()}
