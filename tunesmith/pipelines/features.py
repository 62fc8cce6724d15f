"""The ``features`` run kind (method ``feature_extraction``): a frozen LLM as a fixed feature extractor + a
scikit-learn classifier.

It does not use the training loop: its fit step extracts (or reuses cached) features and fits the classifier
(:mod:`tunesmith.methods.features`); ``api.evaluate/predict`` hand its runs to :func:`evaluate` and
:func:`predict`.
The run directory has the usual files (config.yaml, data_report.json, summary.json, predictions, report.html)
and ``classifier/`` (arrays in safetensors + JSON; see :mod:`tunesmith.methods.features`)::

    tunesmith train recipes/feature_extraction.yaml
    tunesmith predict runs/<name> --data tweets.txt --out labels.txt
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import RunConfig
from tunesmith.data.formats import read_source
from tunesmith.data.prepare import PreparedData, prepare_data
from tunesmith.errors import ConfigError
from tunesmith.evaluate.metrics import classification_metrics
from tunesmith.io import write_jsonl_atomic
from tunesmith.methods.features import LinearStack, cached_features, fit_classifier
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.pipelines.base import (
    Fit,
    Pipeline,
    Run,
    data_hashes,
    label_rows,
    read_texts,
    summarise,
    write_predictions,
)
from tunesmith.runs import RunDir, Summary, read_run_config
from tunesmith.train.monitor import peak_rss_mb


class _LazyModel:
    """Loads the LLM on first use only (when some features are not cached yet), then keeps it."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.model = cfg, None

    def __call__(self) -> Any:
        if self.model is None:
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
    probs = stack.predict_proba(feats, len(label_names))
    predicted = probs.argmax(axis=1).tolist()
    return {**classification_metrics(y_true, predicted, label_names), "labels": label_names}, probs


def _label_names(run_dir: Path) -> list[str]:
    return RunDir(run_dir).read_data_report()["label_names"]


class FeaturesPipeline(Pipeline):
    """Extract (or reuse cached) features for every split, fit the classifier, evaluate, write the run."""

    name = "features"
    seed_first = False  # nothing random before the classifier, which takes the seed itself

    def prepare(self, run: Run) -> PreparedData:
        cfg = run.cfg
        data = prepare_data(cfg.data, run.tokenizer, cfg.seed)
        if data.kind != "classification" or not data.label_names:
            raise ConfigError(
                f"method feature_extraction needs classification data (rows with text and label); "
                f"{cfg.data.train} holds {data.kind!r} rows. Use data.format: classification or another "
                "method"
            )
        run.dir.write_data_report(data.report)
        run.task = "classification"
        return data

    def start_model(self, run: Run, data: PreparedData) -> _LazyModel:
        return _LazyModel(run.cfg)  # loaded only if some features are not cached yet

    def fit(self, run: Run, model: _LazyModel, data: PreparedData) -> Fit:
        cfg = run.cfg
        splits = {"train": data.train, "validation": data.validation, "test": data.test}
        feats, cache, y = {}, {}, {}
        t_feat = time.perf_counter()
        for name, split in splits.items():
            if split is not None and split.examples:
                texts = [ex.text or "" for ex in split.examples]
                feats[name], cache[name] = _features(cfg, run.tokenizer, texts, model)
                y[name] = [int(ex.label) for ex in split.examples]
        t_fit = time.perf_counter()
        stack, _ = fit_classifier(feats["train"], np.array(y["train"]), cfg.method, cfg.seed)
        run.timings["features_s"] = t_fit - t_feat
        run.timings["train_s"] = time.perf_counter() - t_fit
        return Fit(stack, None, extra={"feats": feats, "cache": cache, "y": y})

    def save(self, run: Run, fit: Fit) -> None:
        run.dir.classifier.mkdir(exist_ok=True)
        fit.model.save(run.dir.classifier)

    def evaluate(self, run: Run, fit: Fit, data: PreparedData, before: Any) -> dict[str, Any]:
        assert data.label_names is not None
        feats, y = fit.extra["feats"], fit.extra["y"]
        evals = {}
        for name in ("validation", "test"):
            if name in feats:
                metrics, probs = _score(fit.model, feats[name], y[name], data.label_names)
                evals[name] = {"tuned": metrics}
                path = f"{run.dir.predictions('tuned')}_{name}.jsonl"
                write_jsonl_atomic(path, [{"label": int(p)} for p in probs.argmax(1)])
        return evals

    def summarise(self, run: Run, fit: Fit, data: PreparedData, evals: dict[str, Any]) -> Summary:
        stack, feats = fit.model, fit.extra["feats"]
        n = stack.n_parameters()
        # No optimizer steps: the LLM is frozen and the classifier is fitted by scikit-learn.
        examples = len(fit.extra["y"]["train"])
        train = {"steps": 0, "total_steps": 0, "tokens": 0, "tokens_per_s": 0.0, "examples": examples}
        dim = int(feats["train"].shape[1])
        features = {"dim": dim, "cache": fit.extra["cache"], "classifier": stack.kind}
        return summarise(
            run.cfg,
            task="classification",
            params=(n, n),
            evals=evals,
            train=train,
            timings=run.timings,
            peak_memory_mb=peak_rss_mb(),
            hashes=data_hashes(data),
            after_train={"features": features},
        )


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Classification metrics of a finished run on ``data`` (default: its validation/test splits)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    label_names = _label_names(run_dir)
    stack = LinearStack.load(RunDir(run_dir).classifier)
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


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "jsonl") -> Path:
    """One label per input, in input order: ``fmt="labels"`` ids one per line, else JSONL + probabilities."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    label_names = _label_names(run_dir)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    feats, _ = _features(cfg, tokenizer, read_texts(data, cfg, label_names), _LazyModel(cfg))
    probs = LinearStack.load(RunDir(run_dir).classifier).predict_proba(feats, len(label_names))
    return write_predictions(out, label_rows(probs, label_names), fmt)
