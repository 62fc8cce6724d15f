"""The Python API: what the CLI and users call.

import tunesmith
summary = tunesmith.train("recipes/lora.yaml", overrides=["train.max_steps=50"])
metrics = tunesmith.evaluate("runs/lora-demo", data="new.jsonl")
tunesmith.predict("runs/lora-demo", data="questions.jsonl", out="answers.jsonl")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig, apply_overrides, config_from_dict, load_config
from tunesmith.data.formats import Example
from tunesmith.data.mixing import with_prefix
from tunesmith.data.prepare import Split
from tunesmith.data.prompts import read_prompts
from tunesmith.errors import ConfigError
from tunesmith.evaluate.runner import classify, predict_texts, resolve_task
from tunesmith.methods import load_trained
from tunesmith.pipelines import registry
from tunesmith.pipelines.base import LABELS_NEED_CLASSIFICATION, write_predictions
from tunesmith.pipelines.lm import prepare_file as _prepare_file
from tunesmith.runs import RunDir, read_run_config


def _as_config(config: RunConfig | str | Path | None, overrides: list[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raw = config.model_dump(mode="json")
            return config_from_dict(apply_overrides(raw, overrides), "<config + overrides>")
        return config
    return load_config(config, overrides)


def train(
    config: RunConfig | str | Path | None = None, overrides: list[str] | None = None, resume: bool = False
) -> dict[str, Any]:
    """Prepare data, evaluate the base, train, save, evaluate the tuned model, write the run directory.

    Returns the summary (also written to ``summary.json``). Ctrl-C saves a checkpoint; ``resume=True``
    continues. The run kind (lm, head, features, staged) is chosen by
    :func:`tunesmith.pipelines.registry.kind_of`.
    """
    return dict(registry.train(_as_config(config, overrides), resume))


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run on ``data`` (default: the run's own validation/test splits)."""
    return registry.evaluate(run_dir, data)


def predict(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str = "auto") -> Path:
    """One prediction per input row, in input order: generated text, or the label for classification.

    A generation run answers questions: chat rows ending with the user's turn, ``prompt`` rows,
    ``instruction`` (+``input``) rows without ``output``, a ``.txt`` with one question per line (a blank line
    gets an empty answer), and training rows (their answer is not read). Each prompt is rendered as training
    rendered it (chat template, ``data.system_prompt``, ``data.prefix``) plus the generation prompt.

    ``fmt``: ``jsonl`` (``{"prediction": ...}`` or label rows with probabilities), ``text`` (one answer per
    line, see :func:`write_predictions`), ``labels`` (classification runs: one label id per line, the format
    benchmarks read), or ``auto``: ``.txt`` outputs get ``labels`` (classification) or ``text``
    (generation), anything else JSONL.
    """
    method_runner = registry.PREDICT.get(registry.kind_of(read_run_config(run_dir)))
    if method_runner is not None:  # kinds with their own predict (head, features)
        return method_runner(run_dir, data, out, fmt)
    label_names = RunDir(run_dir).read_data_report().get("label_names")
    if not label_names:  # a generation run: the inputs are prompts
        return _predict_answers(run_dir, data, out, fmt)
    model, tokenizer, cfg = load_trained(run_dir)
    if Path(data).suffix == ".txt":  # a classification run reads plain text: one input a line
        split, task = _plain_text_split(data), "classification"
    else:
        prepared = _prepare_file(cfg, tokenizer, data)
        split, task = prepared.train, resolve_task(cfg, prepared.kind)
    if task == "classification":
        predicted, probs = classify(model, tokenizer, split, label_names, cfg)
        rows = [
            {"label": int(p), "label_name": label_names[p], "probs": [round(x, 6) for x in pr]}
            for p, pr in zip(predicted, probs, strict=True)
        ]
    else:
        rows = [{"prediction": text} for text in predict_texts(model, tokenizer, split, cfg)]
    return write_predictions(out, rows, fmt)


def _predict_answers(run_dir: str | Path, data: str | Path, out: str | Path, fmt: str) -> Path:
    """A generation run's answers to the prompts in ``data`` (see :func:`predict`), in input order."""
    if fmt == "labels":  # before loading and generating anything
        raise ConfigError(LABELS_NEED_CLASSIFICATION)
    inputs = read_prompts(data)  # bad rows stop here, before the model loads
    model, tokenizer, cfg = load_trained(run_dir)
    if cfg.data.prefix:  # training put it before every input; so must prediction
        inputs = [ex if ex is None else with_prefix(ex, cfg.data.prefix) for ex in inputs]
    asked = [ex for ex in inputs if ex is not None]
    answers = iter(predict_texts(model, tokenizer, Split(asked, [], []), cfg) if asked else [])
    rows = [{"prediction": "" if ex is None else next(answers)} for ex in inputs]
    return write_predictions(out, rows, fmt)


def _plain_text_split(path: str | Path) -> Split:
    """Every line of ``path`` (blank ones too, so output line i answers input line i) as an unlabeled
    classification example; the label 0 is a placeholder that prompts never include."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    examples = [Example(str(path), i, "classification", text=t, label=0) for i, t in enumerate(lines, 1)]
    return Split(examples, [], [])


__all__ = ["evaluate", "predict", "read_run_config", "train", "write_predictions"]
