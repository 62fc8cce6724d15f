"""Evaluate a model on a prepared split: generation metrics, label scoring, or perplexity, by task.

metrics, predictions = evaluate_split(model, tokenizer, split, task, label_names, cfg)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tunesmith.config import RunConfig
from tunesmith.data.prepare import Split
from tunesmith.data.render import head_input_ids, reference_text, render_prompt
from tunesmith.evaluate.metrics import classification_metrics, generation_metrics
from tunesmith.infer.batching import TokenData, model_device
from tunesmith.infer.generate import generate_texts, head_logits, label_log_likelihoods, label_token_ids
from tunesmith.infer.loss import evaluate_loss


def resolve_task(cfg: RunConfig, data_kind: str) -> str:
    """``generation``, ``classification`` or ``language_modeling`` (raw text: perplexity only)."""
    if cfg.task != "auto":
        return cfg.task
    return {"classification": "classification", "text": "language_modeling"}.get(data_kind, "generation")


def cap(split: Split, limit: int | None) -> Split:
    if limit is None or len(split.examples) <= limit:
        return split
    return Split(split.examples[:limit], split.input_ids[:limit], split.labels[:limit])


def classify(
    model: Any, tokenizer: Any, split: Split, label_names: list[str], cfg: RunConfig
) -> tuple[list[int], list[list[float]]]:
    """Predicted label ids and per-label probabilities (softmax over label log-likelihoods)."""
    prompts = [
        render_prompt(ex, tokenizer, cfg.data.system_prompt, cfg.data.label_prompt) for ex in split.examples
    ]
    scores = label_log_likelihoods(
        model, prompts, label_token_ids(tokenizer, label_names), tokenizer.pad_token_id, cfg.eval.batch_size
    )
    probs = scores.softmax(dim=-1)
    return scores.argmax(dim=-1).tolist(), probs.tolist()


def predict_texts(model: Any, tokenizer: Any, split: Split, cfg: RunConfig) -> list[str]:
    prompts = [
        render_prompt(ex, tokenizer, cfg.data.system_prompt, cfg.data.label_prompt) for ex in split.examples
    ]
    return generate_texts(model, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size)


def evaluate_split(
    model: Any,
    tokenizer: Any,
    split: Split,
    task: str,
    label_names: list[str] | None,
    cfg: RunConfig,
) -> tuple[dict[str, Any], list[Any]]:
    """Metrics for one split plus the raw predictions (texts or label ids), in split order."""
    split = cap(split, cfg.eval.max_examples)
    loss = evaluate_loss(
        model,
        TokenData(split.input_ids, split.labels),
        cfg.eval.batch_size,
        tokenizer.pad_token_id,
        model_device(model),
    )
    common = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if task == "classification":
        assert label_names is not None
        predicted, _ = classify(model, tokenizer, split, label_names, cfg)
        y_true = [int(ex.label) for ex in split.examples]
        metrics = classification_metrics(y_true, predicted, label_names)
        metrics["labels"] = label_names
        return {**metrics, **common}, predicted
    if task == "language_modeling":
        return {**common, "n": len(split.examples)}, []
    predictions = predict_texts(model, tokenizer, split, cfg)
    references = [reference_text(ex, label_names) for ex in split.examples]
    return {**generation_metrics(predictions, references), **common}, predictions


def head_probs(model: Any, tokenizer: Any, cfg: RunConfig, texts: list[str]) -> torch.Tensor:
    """Class probabilities (n, labels) for raw texts, rendered as in training (the run's prefix and
    suffix, truncated to ``data.max_length`` as training truncates)."""
    prefix, suffix = cfg.data.prefix or "", cfg.data.suffix or ""  # training added them, so must we
    ids = [head_input_ids(prefix + text, tokenizer, suffix, cfg.data.max_length) for text in texts]
    return head_logits(model, ids, tokenizer.pad_token_id, cfg.eval.batch_size).softmax(dim=-1)
