"""Train, evaluate and predict with a sequence-classification head (``model.head: classification``).

``api.train/evaluate/predict`` hand head runs here. Training is the one loop (:func:`train_loop`) with
:func:`~tunesmith.train.losses.sequence_classification_loss`; everything else is a head run's own::

    tunesmith train recipes/tweeteval-emotion-head.yaml
    tunesmith predict runs/tweeteval-emotion-head --data tweets.txt --out labels.txt   # one id per line

Base vs tuned: the base is **not** evaluated for head runs. The head starts random, so the "base" would be
a random linear map of the untouched LLM's features: chance level, and a full validation pass to learn
that. summary.json says so under ``head.base``; the zero-shot base of the same model and data is what a
``model.head: lm`` run reports. For the same reason the in-context baselines and the forgetting probes
(which need the vocabulary head) are skipped; the overfitting check and the gates still run.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.config import RunConfig, dump_config
from tunesmith.data.prepare import PreparedData, Split, prepare_data
from tunesmith.infer.generate import head_logits
from tunesmith.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from tunesmith.methods import optimizer_for
from tunesmith.methods.seq_cls import (
    check_supported,
    label_names_of,
    prepare_head,
    start_model,
)

BASE_NOTE = (
    "not evaluated: the classification head starts random, so the base model has no classifier to compare "
    "(it would score at chance); a model.head: lm run of the same model and data reports the zero-shot base"
)
SKIPPED_NOTE = "in-context baselines and forgetting probes skipped: they need the LM's vocabulary head"


def evaluate_head_split(
    model: Any, split: Split, label_names: list[str], pad_id: int, cfg: RunConfig
) -> tuple[dict[str, Any], list[int]]:
    """Accuracy, macro P/R/F1, per-class F1, confusion matrix and mean cross-entropy; plus the predictions."""
    from tunesmith.evaluate.runner import _cap

    split = _cap(split, cfg.eval.max_examples)
    return score_head(model, split, label_names, pad_id, cfg.eval.batch_size)


def score_head(
    model: Any,
    split: Split,
    label_names: list[str],
    pad_id: int,
    batch_size: int,
    weights: torch.Tensor | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """One forward over a labelled split: classification metrics plus ``loss``, the mean cross-entropy per
    example (class-weighted when ``weights`` are given, as the head trains), and the predicted ids."""
    from tunesmith.evaluate.metrics import classification_metrics

    logits = head_logits(model, split.input_ids, pad_id, batch_size)
    y_true = [int(ex.label) for ex in split.examples]  # type: ignore[arg-type]
    predicted = logits.argmax(dim=-1).tolist()
    metrics = classification_metrics(y_true, predicted, label_names)
    loss_sum = F.cross_entropy(logits, torch.tensor(y_true), weight=weights, reduction="sum")
    metrics["loss"] = float(loss_sum) / len(y_true)
    return metrics, predicted


def class_weights(labels: list[list[int]], n_classes: int, rule: str) -> torch.Tensor | None:
    """Per-class loss weights for ``train.class_weights``: None for ``none``; for ``balanced``
    n / (k x n_class) over the training rows (each row's class id is its one labelled position).
    A class absent from training gets weight 0: it has no examples to weigh."""
    if rule == "none":
        return None
    counts = Counter(next(t for t in row if t != -100) for row in labels)
    total = sum(counts.values())
    return torch.tensor([total / (n_classes * counts[c]) if counts[c] else 0.0 for c in range(n_classes)])


def head_val_metrics(split: Split, label_names: list[str], pad_id: int, weights: torch.Tensor | None):
    """The training loop's validation pass for a head (``train_loop(val_metrics=...)``): one
    :func:`score_head` over ``split`` gives the loss the head trains on (class-weighted like it) and the
    scores ``train.best_metric`` may pick by (``val_macro_f1``, ``val_accuracy``)."""

    def scores(model: Any, batch_size: int) -> dict[str, float]:
        metrics, _ = score_head(model, split, label_names, pad_id, batch_size, weights)
        return {
            "val_loss": metrics["loss"],
            "val_macro_f1": metrics["f1_macro"],
            "val_accuracy": metrics["accuracy"],
        }

    return scores


def _eval_splits(data: PreparedData) -> dict[str, Split]:
    return {
        n: s for n, s in (("validation", data.validation), ("test", data.test)) if s is not None and len(s)
    }


def train(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Prepare the data (text alone, class id at the last token), train the head, save, evaluate, report."""
    from tunesmith.api import _print_data_report, _run_prepare_steps, _summary, seed_everything
    from tunesmith.evaluate.evidence import after_training, apply_evidence
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.runs import save_trained
    from tunesmith.train.loop import TokenData, train_loop
    from tunesmith.train.losses import sequence_classification_loss

    check_supported(cfg)
    t_start = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    data_cfg, prepare_reports = _run_prepare_steps(cfg, run_dir)
    data = prepare_data(data_cfg, tokenizer, cfg.seed, head="classification")
    if prepare_reports:
        data.report["prepare"] = prepare_reports
    write_json_atomic(run_dir / "data_report.json", data.report)
    _print_data_report(data.report)
    assert data.label_names is not None  # classification data always has label names
    seed_everything(cfg.seed)  # the new head's initialisation (and LoRA's) follows the run seed
    model = prepare_head(start_model(cfg, data.label_names, tokenizer), cfg.method)
    val = data.validation
    weights = class_weights(data.train.labels, len(data.label_names), cfg.train.class_weights)
    result = train_loop(
        model,
        TokenData(data.train.input_ids, data.train.labels),
        TokenData(val.input_ids, val.labels) if val is not None and len(val) else None,
        cfg.train,
        seed=cfg.seed,
        run_dir=run_dir,
        pad_id=tokenizer.pad_token_id,
        resume=resume,
        loss_fn=functools.partial(sequence_classification_loss, class_weights=weights),
        make_optimizer=optimizer_for(cfg.method),
        val_metrics=head_val_metrics(val, data.label_names, tokenizer.pad_token_id, weights)
        if val is not None and len(val)
        else None,
    )
    timings = {"train_s": result.train_seconds}
    evals: dict[str, dict[str, Any]] = {}
    if not result.interrupted:
        save_trained(model, tokenizer, run_dir)
        t_eval = time.perf_counter()
        for name, split in _eval_splits(data).items():
            metrics, predicted = evaluate_head_split(
                model, split, data.label_names, tokenizer.pad_token_id, cfg
            )
            evals[name] = {"tuned": metrics}
            write_jsonl_atomic(run_dir / f"predictions_tuned_{name}.jsonl", [{"label": p} for p in predicted])
        timings["tuned_eval_s"] = time.perf_counter() - t_eval
    timings["total_s"] = time.perf_counter() - t_start
    summary = _summary(cfg, "classification", model, result, evals, data, timings)
    summary["head"] = {"type": "classification", "labels": data.label_names, "base": BASE_NOTE}
    summary["head"]["skipped"] = SKIPPED_NOTE
    summary["head"]["class_weights"] = None if weights is None else [round(float(w), 6) for w in weights]
    if not result.interrupted:
        tuned = {split: v["tuned"] for split, v in evals.items()}
        apply_evidence(
            summary, after_training(run_dir, model, tokenizer, data, "classification", cfg, {}, tuned, result)
        )
    write_json_atomic(run_dir / "summary.json", summary)
    from tunesmith.report.html import write_report

    write_report(run_dir)
    return summary


def _prepare_file(cfg: RunConfig, tokenizer: Any, path: str | Path, label_names: list[str]) -> Split:
    """A labelled file prepared like the run's data (head rendering, the run's label order)."""
    update = {"train": str(path), "validation": None, "test": None, "validation_fraction": 0.0}
    data_cfg = cfg.data.model_copy(update={**update, "labels": label_names, "prepare": []})
    return prepare_data(data_cfg, tokenizer, cfg.seed, head="classification").train


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished head run on ``data`` (default: the run's own validation/test splits)."""
    from tunesmith.runs import load_trained

    model, tokenizer, cfg = load_trained(run_dir)
    label_names = label_names_of(run_dir)
    if data is not None:
        splits = {"validation": _prepare_file(cfg, tokenizer, data, label_names)}
    else:
        splits = _eval_splits(prepare_data(cfg.data, tokenizer, cfg.seed, head="classification"))
    pad_id = tokenizer.pad_token_id
    return {name: evaluate_head_split(model, s, label_names, pad_id, cfg)[0] for name, s in splits.items()}


def head_probs(model: Any, tokenizer: Any, cfg: RunConfig, texts: list[str]) -> torch.Tensor:
    """Class probabilities (n, labels) for raw texts, rendered as in training (the run's prefix and
    suffix, truncated to ``data.max_length`` as training truncates)."""
    from tunesmith.data.render import head_input_ids

    prefix, suffix = cfg.data.prefix or "", cfg.data.suffix or ""  # training added them, so must we
    ids = [head_input_ids(prefix + text, tokenizer, suffix, cfg.data.max_length) for text in texts]
    return head_logits(model, ids, tokenizer.pad_token_id, cfg.eval.batch_size).softmax(dim=-1)


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "jsonl") -> Path:
    """One label per input in input order: ``fmt="labels"`` writes ids one per line, else JSONL with
    ``label``, ``label_name`` and ``probs``. Plain ``.txt`` is one text per line (blank lines too)."""
    from tunesmith.api import write_predictions
    from tunesmith.methods.feature_extraction import read_texts
    from tunesmith.runs import load_trained

    model, tokenizer, cfg = load_trained(run_dir)
    label_names = label_names_of(run_dir)
    probs = head_probs(model, tokenizer, cfg, read_texts(data, cfg, label_names))
    rows = [
        {
            "label": int(p.argmax()),
            "label_name": label_names[int(p.argmax())],
            "probs": [round(float(x), 6) for x in p],
        }
        for p in probs
    ]
    return write_predictions(out, rows, fmt)
