"""The ``feature_extraction`` method: a frozen LLM as a fixed feature extractor + a scikit-learn classifier.

It does not use the training loop, so it registers as a runner (``tunesmith.methods.RUNNERS``) and
``api.train/evaluate/predict`` hand the whole job to :func:`train`, :func:`evaluate` and :func:`predict`.
The run directory has the usual files (config.yaml, data_report.json, summary.json, predictions, report.html)
and ``classifier/`` (arrays in safetensors + JSON; see :mod:`tunesmith.methods.features`)::

    tunesmith train recipes/feature_extraction.yaml
    tunesmith predict runs/<name> --data tweets.txt --out labels.txt
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import RunConfig, dump_config
from tunesmith.errors import ConfigError
from tunesmith.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from tunesmith.methods.features import LinearStack, cached_features, fit_classifier


class _LazyModel:
    """Loads the LLM on first use only (when some features are not cached yet), then keeps it."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.model = cfg, None

    def __call__(self) -> Any:
        if self.model is None:
            from tunesmith.models.loading import load_causal_lm

            model_cfg = self.cfg.model
            self.model = load_causal_lm(model_cfg.name, model_cfg.dtype, model_cfg.trust_remote_code).eval()
        return self.model


def _features(cfg: RunConfig, tokenizer: Any, texts: list[str], model: _LazyModel) -> tuple[np.ndarray, str]:
    # data.suffix (e.g. "\nEmotion:"): the last token is then the model about to name the class.
    feats, status = cached_features(
        model, tokenizer, texts, cfg.model.name, cfg.method, cfg.data.max_length, cfg.data.suffix or ""
    )
    return feats.numpy(), status


def _score(
    stack: LinearStack, feats: np.ndarray, y_true: list[int], label_names: list[str]
) -> tuple[dict[str, Any], np.ndarray]:
    from tunesmith.evaluate.metrics import classification_metrics

    probs = stack.predict_proba(feats, len(label_names))
    predicted = probs.argmax(axis=1).tolist()
    return {**classification_metrics(y_true, predicted, label_names), "labels": label_names}, probs


def _label_names(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))["label_names"]


def train(cfg: RunConfig) -> dict[str, Any]:
    """Extract (or reuse cached) features for every split, fit the classifier, evaluate, write the run."""
    from tunesmith.api import _versions
    from tunesmith.data.prepare import prepare_data
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.train.monitor import peak_rss_mb

    t_start = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    data = prepare_data(cfg.data, tokenizer, cfg.seed)
    if data.kind != "classification" or not data.label_names:
        raise ConfigError(
            f"method feature_extraction needs classification data (rows with text and label); "
            f"{cfg.data.train} holds {data.kind!r} rows. Use data.format: classification or another method"
        )
    write_json_atomic(run_dir / "data_report.json", data.report)
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    feats, cache, y, model = {}, {}, {}, _LazyModel(cfg)
    t_feat = time.perf_counter()
    for name, split in splits.items():
        if split is not None and split.examples:
            texts = [ex.text or "" for ex in split.examples]
            feats[name], cache[name] = _features(cfg, tokenizer, texts, model)
            y[name] = [int(ex.label) for ex in split.examples]
    t_fit = time.perf_counter()
    stack, _ = fit_classifier(feats["train"], np.array(y["train"]), cfg.method, cfg.seed)
    fit_s = time.perf_counter() - t_fit
    (run_dir / "classifier").mkdir(exist_ok=True)
    stack.save(run_dir / "classifier")
    evals = {}
    for name in ("validation", "test"):
        if name in feats:
            metrics, probs = _score(stack, feats[name], y[name], data.label_names)
            evals[name] = {"tuned": metrics}
            write_jsonl_atomic(
                run_dir / f"predictions_tuned_{name}.jsonl", [{"label": int(p)} for p in probs.argmax(1)]
            )
    summary = {
        "name": cfg.name,
        "status": "completed",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "task": "classification",
        "trainable_params": stack.n_parameters(),
        "total_params": stack.n_parameters(),
        "eval": evals,
        # No optimizer steps: the LLM is frozen and the classifier is fitted by scikit-learn.
        "train": {
            "steps": 0,
            "total_steps": 0,
            "tokens": 0,
            "tokens_per_s": 0.0,
            "examples": len(y["train"]),
        },
        "features": {"dim": int(feats["train"].shape[1]), "cache": cache, "classifier": stack.kind},
        "timings": {
            "features_s": round(t_fit - t_feat, 2),
            "train_s": round(fit_s, 2),
            "total_s": round(time.perf_counter() - t_start, 2),
        },
        "peak_memory_mb": peak_rss_mb(),
        "versions": _versions(),
        "data_hashes": {k: v.get("sha256") for k, v in data.report.get("files", {}).items()},
    }
    write_json_atomic(run_dir / "summary.json", summary)
    from tunesmith.report.html import write_report

    write_report(run_dir)
    return summary


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Classification metrics of a finished run on ``data`` (default: its validation/test splits)."""
    from tunesmith.data.formats import read_source
    from tunesmith.data.prepare import prepare_data
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.runs import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    label_names = _label_names(run_dir)
    stack = LinearStack.load(run_dir / "classifier")
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    if data is not None:
        examples = {"data": read_source(data, cfg.data.format, cfg.data.on_bad_row, label_names).examples}
    else:
        prepared = prepare_data(cfg.data, tokenizer, cfg.seed)
        examples = {
            n: s.examples for n, s in (("validation", prepared.validation), ("test", prepared.test)) if s
        }
    results, model = {}, _LazyModel(cfg)
    for name, rows in examples.items():
        if any(ex.label is None for ex in rows):
            raise ConfigError(
                f"{data}: evaluation needs a label on every row (use predict for unlabeled text)"
            )
        feats, _ = _features(cfg, tokenizer, [ex.text or "" for ex in rows], model)
        results[name], _ = _score(stack, feats, [int(ex.label) for ex in rows], label_names)
    return results


def read_texts(path: str | Path, cfg: RunConfig, label_names: list[str]) -> list[str]:
    """Inputs in file order: plain .txt is one text per line (blank lines included, so ids stay aligned)."""
    from tunesmith.data.formats import read_source

    if str(path).endswith(".txt"):
        return Path(path).read_text(encoding="utf-8").splitlines()
    return [ex.text or "" for ex in read_source(path, "auto", cfg.data.on_bad_row, label_names).examples]


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "jsonl") -> Path:
    """One label per input, in input order: ``fmt="labels"`` ids one per line, else JSONL + probabilities."""
    from tunesmith.api import write_predictions
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.runs import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    label_names = _label_names(run_dir)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    feats, _ = _features(cfg, tokenizer, read_texts(data, cfg, label_names), _LazyModel(cfg))
    probs = LinearStack.load(run_dir / "classifier").predict_proba(feats, len(label_names))
    rows = [
        {
            "label": int(p.argmax()),
            "label_name": label_names[int(p.argmax())],
            "probs": [round(float(x), 6) for x in p],
        }
        for p in probs
    ]
    return write_predictions(out, rows, fmt)
