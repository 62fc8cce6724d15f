"""The ``head`` run kind: train, evaluate and predict with a sequence-classification head
(``model.head: classification``).

Training is the one loop (:func:`train_loop`) with
:func:`~tunesmith.train.losses.sequence_classification_loss`; the model side (loading, the new ``score``
layer, applying the method) is :mod:`tunesmith.methods.seq_cls`::

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

from tunesmith.config import RunConfig
from tunesmith.data.prepare import PreparedData, Split, prepare_data
from tunesmith.evaluate.evidence import after_training
from tunesmith.evaluate.metrics import classification_metrics
from tunesmith.evaluate.runner import cap, head_probs
from tunesmith.infer.batching import TokenData
from tunesmith.infer.generate import head_logits
from tunesmith.io import write_jsonl_atomic
from tunesmith.methods import load_trained, optimizer_for
from tunesmith.methods.seq_cls import check_supported, prepare_head, start_model
from tunesmith.pipelines.base import (
    Fit,
    Pipeline,
    Run,
    apply_prepare_steps,
    label_rows,
    loop_summary,
    print_data_report,
    read_texts,
    seed_everything,
    write_predictions,
)
from tunesmith.runs import RunDir, Summary, save_trained
from tunesmith.train.loop import train_loop
from tunesmith.train.losses import sequence_classification_loss

BASE_NOTE = (
    "not evaluated: the classification head starts random, so the base model has no classifier to compare "
    "(it would score at chance); a model.head: lm run of the same model and data reports the zero-shot base"
)
SKIPPED_NOTE = "in-context baselines and forgetting probes skipped: they need the LM's vocabulary head"


def evaluate_head_split(
    model: Any, split: Split, label_names: list[str], pad_id: int, cfg: RunConfig
) -> tuple[dict[str, Any], list[int]]:
    """Accuracy, macro P/R/F1, per-class F1, confusion matrix and mean cross-entropy; plus the predictions."""
    split = cap(split, cfg.eval.max_examples)
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


class HeadPipeline(Pipeline):
    """Prepare the data (text alone, class id at the last token), train the head, save, evaluate, report."""

    name = "head"
    distributes = True
    seed_first = False  # the run seed is set where the new head is initialised (start_model)

    def check(self, cfg: RunConfig) -> None:
        check_supported(cfg)

    def prepare(self, run: Run) -> PreparedData:
        cfg = run.cfg
        data_cfg, prepare_reports = apply_prepare_steps(cfg, run.dir)
        data = prepare_data(data_cfg, run.tokenizer, cfg.seed, head="classification")
        if prepare_reports:
            data.report["prepare"] = prepare_reports
        run.dir.write_data_report(data.report)
        print_data_report(data.report)
        assert data.label_names is not None  # classification data always has label names
        run.task = "classification"
        return data

    def start_model(self, run: Run, data: PreparedData) -> Any:
        seed_everything(run.cfg.seed)  # the new head's initialisation (and LoRA's) follows the run seed
        assert data.label_names is not None
        return prepare_head(start_model(run.cfg, data.label_names, run.tokenizer), run.cfg.method)

    def fit(self, run: Run, model: Any, data: PreparedData) -> Fit:
        cfg, pad_id = run.cfg, run.tokenizer.pad_token_id
        assert data.label_names is not None
        val = data.validation
        weights = class_weights(data.train.labels, len(data.label_names), cfg.train.class_weights)
        result = train_loop(
            model,
            TokenData(data.train.input_ids, data.train.labels),
            TokenData(val.input_ids, val.labels) if val is not None and len(val) else None,
            cfg.train,
            seed=cfg.seed,
            run_dir=run.dir.path,
            pad_id=pad_id,
            resume=run.resume,
            loss_fn=functools.partial(sequence_classification_loss, class_weights=weights),
            make_optimizer=optimizer_for(cfg.method),
            hooks=run.hooks,
            val_metrics=head_val_metrics(val, data.label_names, pad_id, weights)
            if val is not None and len(val)
            else None,
        )
        run.timings["train_s"] = result.train_seconds
        return Fit(model, result, result.interrupted, {"weights": weights})

    def save(self, run: Run, fit: Fit) -> None:
        save_trained(fit.model, run.tokenizer, run.dir.path)

    def evaluate(self, run: Run, fit: Fit, data: PreparedData, before: Any) -> dict[str, Any]:
        assert data.label_names is not None
        t_eval = time.perf_counter()
        evals: dict[str, Any] = {}
        for name, split in _eval_splits(data).items():
            metrics, predicted = evaluate_head_split(
                fit.model, split, data.label_names, run.tokenizer.pad_token_id, run.cfg
            )
            evals[name] = {"tuned": metrics}
            path = f"{run.dir.predictions('tuned')}_{name}.jsonl"
            write_jsonl_atomic(path, [{"label": p} for p in predicted])
        run.timings["tuned_eval_s"] = time.perf_counter() - t_eval
        return evals

    def summarise(self, run: Run, fit: Fit, data: PreparedData, evals: dict[str, Any]) -> Summary:
        assert fit.result is not None
        summary = loop_summary(run, fit.model, "classification", fit.result, evals, data)
        weights = fit.extra["weights"]
        summary["head"] = {"type": "classification", "labels": data.label_names, "base": BASE_NOTE}
        summary["head"]["skipped"] = SKIPPED_NOTE
        summary["head"]["class_weights"] = None if weights is None else [round(float(w), 6) for w in weights]
        return summary

    def evidence(self, run: Run, fit: Fit, data: PreparedData, before: Any, evals: dict[str, Any]) -> Any:
        """The overfitting check and the gates (no in-context baselines or probes: see the module doc)."""
        tuned = {split: v["tuned"] for split, v in evals.items()}
        return after_training(
            run.dir.path, fit.model, run.tokenizer, data, "classification", run.cfg, {}, tuned, fit.result
        )


def _prepare_file(cfg: RunConfig, tokenizer: Any, path: str | Path, label_names: list[str]) -> Split:
    """A labelled file prepared like the run's data (head rendering, the run's label order)."""
    update = {"train": str(path), "validation": None, "test": None, "validation_fraction": 0.0}
    data_cfg = cfg.data.model_copy(update={**update, "labels": label_names, "prepare": []})
    return prepare_data(data_cfg, tokenizer, cfg.seed, head="classification").train


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished head run on ``data`` (default: the run's own validation/test splits)."""
    model, tokenizer, cfg = load_trained(run_dir)
    label_names = RunDir(run_dir).require_label_names()
    if data is not None:
        splits = {"validation": _prepare_file(cfg, tokenizer, data, label_names)}
    else:
        splits = _eval_splits(prepare_data(cfg.data, tokenizer, cfg.seed, head="classification"))
    pad_id = tokenizer.pad_token_id
    return {name: evaluate_head_split(model, s, label_names, pad_id, cfg)[0] for name, s in splits.items()}


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "jsonl") -> Path:
    """One label per input in input order: ``fmt="labels"`` writes ids one per line, else JSONL with
    ``label``, ``label_name`` and ``probs``. Plain ``.txt`` is one text per line (blank lines too)."""
    model, tokenizer, cfg = load_trained(run_dir)
    label_names = RunDir(run_dir).require_label_names()
    probs = head_probs(model, tokenizer, cfg, read_texts(data, cfg, label_names))
    return write_predictions(out, label_rows(probs, label_names), fmt)
