"""The Python API: what the CLI and users call.

import tunesmith
summary = tunesmith.train("recipes/lora.yaml", overrides=["train.max_steps=50"])
metrics = tunesmith.evaluate("runs/lora-demo", data="new.jsonl")
tunesmith.predict("runs/lora-demo", data="questions.jsonl", out="answers.jsonl")
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.config import RunConfig, dump_config, load_config
from tunesmith.data.prepare import PreparedData, Split, prepare_data
from tunesmith.errors import DataError
from tunesmith.evaluate.evidence import after_training, apply_evidence, before_training
from tunesmith.evaluate.runner import classify, evaluate_split, predict_texts, resolve_task
from tunesmith.io import write_json_atomic, write_text_atomic
from tunesmith.methods import (
    count_parameters,
    load_options,
    optimizer_for,
    prepare_model,
    runner,
    runner_for,
)
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.runs import load_trained, read_run_config, save_trained
from tunesmith.train.loop import TokenData, TrainResult, train_loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _as_config(config: RunConfig | str | Path | None, overrides: list[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raw = config.model_dump(mode="json")
            from tunesmith.config import apply_overrides, config_from_dict

            return config_from_dict(apply_overrides(raw, overrides), "<config + overrides>")
        return config
    return load_config(config, overrides)


def _versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    import tunesmith

    return {
        "tunesmith": tunesmith.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def _print_data_report(report: dict[str, Any]) -> None:
    for split, counts in report.get("splits", {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        print(f"tunesmith: data {split}: {shown}")


def _eval_splits(data: PreparedData) -> dict[str, Split]:
    return {name: s for name, s in (("validation", data.validation), ("test", data.test)) if s is not None}


def _evaluate_all(
    model: Any, tokenizer: Any, data: PreparedData, task: str, cfg: RunConfig, save_as: Path | None = None
) -> dict[str, Any]:
    """Metrics per evaluation split; with ``save_as``, predictions go to ``<save_as>_<split>.jsonl``."""
    from tunesmith.io import write_jsonl_atomic

    results = {}
    for name, split in _eval_splits(data).items():
        metrics, predictions = evaluate_split(model, tokenizer, split, task, data.label_names, cfg)
        results[name] = metrics
        if save_as is not None and predictions:
            key = "label" if task == "classification" else "prediction"
            write_jsonl_atomic(f"{save_as}_{name}.jsonl", [{key: p} for p in predictions])
    return results


def _base_eval(run_dir: Path, model: Any, tokenizer: Any, data: PreparedData, task: str, cfg: RunConfig):
    """Base-model metrics, cached in the run dir so --resume (or a re-run) does not recompute them.

    The cache is keyed by what the numbers depend on (model, data settings and hashes, eval settings, task),
    so a re-run with other data or settings in the same run directory evaluates afresh.
    """
    path = run_dir / "base_eval.json"
    key = hashlib.sha256(
        json.dumps(
            [cfg.model.model_dump(), cfg.data.model_dump(), cfg.eval.model_dump(), task, data.report],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["metrics"]
    print("tunesmith: evaluating the base model")
    result = _evaluate_all(model, tokenizer, data, task, cfg, save_as=run_dir / "predictions_base")
    write_json_atomic(path, {"key": key, "metrics": result})
    return result


def _summary(
    cfg: RunConfig,
    task: str,
    model: Any,
    result: TrainResult,
    evals: dict[str, dict[str, Any]],
    data: PreparedData,
    timings: dict[str, float],
) -> dict[str, Any]:
    trainable, total = count_parameters(model)
    tokens_per_s = result.train_tokens / result.train_seconds if result.train_seconds else 0.0
    return {
        "name": cfg.name,
        "status": "interrupted" if result.interrupted else "completed",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "task": task,
        "trainable_params": trainable,
        "total_params": total,
        "eval": evals,
        "train": {
            "steps": result.steps,
            "total_steps": result.total_steps,
            "tokens": result.train_tokens,
            "tokens_per_s": round(tokens_per_s, 1),
            "stopped_early": result.stopped_early,
            "restored_best": result.restored_best,
            "final_val_loss": result.final_val_loss,
        },
        "best": {
            "step": result.best_step,
            "val_loss": result.best_val_loss,
            "metric": cfg.train.best_metric,
            "value": result.best_score,
        },
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "peak_memory_mb": result.peak_memory_mb,
        "versions": _versions(),
        "data_hashes": {k: v.get("sha256") for k, v in data.report.get("files", {}).items()},
    }


def _run_prepare_steps(cfg: RunConfig, run_dir: Path) -> tuple[Any, list[dict[str, Any]]]:
    """Apply ``data.prepare`` steps to the training file; the run trains on the last step's output."""
    if not cfg.data.prepare or cfg.data.train is None:
        return cfg.data, []
    from tunesmith.data.tools.pipeline import run_prepare_steps

    prepared, reports = run_prepare_steps(
        cfg.data.train,
        cfg.data.prepare,
        run_dir / "prepared",
        on_bad_row=cfg.data.on_bad_row,
        model=cfg.model.name,  # augment's paraphrases come from the base model being tuned
    )
    return cfg.data.model_copy(update={"train": str(prepared)}), reports


def _load_start_model(cfg: RunConfig) -> Any:
    """The weights training starts from: ``model.name`` (with the method's load options, e.g. qlora's 4-bit
    quantization), or with ``init_from`` an earlier run's result with its adapter merged in."""
    options = load_options(cfg.method)
    if cfg.init_from is None:
        return load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code, **options)
    if options:
        from tunesmith.errors import ConfigError

        raise ConfigError(
            f"init_from: {cfg.init_from} cannot be combined with method {cfg.method.name} (it re-loads the "
            "base quantized); start from the run with method lora, or export it and set model.name"
        )
    model, _, _ = load_trained(cfg.init_from, merge=True)
    return model


def train(
    config: RunConfig | str | Path | None = None, overrides: list[str] | None = None, resume: bool = False
) -> dict[str, Any]:
    """Prepare data, evaluate the base, train, save, evaluate the tuned model, write the run directory.

    Returns the summary (also written to ``summary.json``). Ctrl-C saves a checkpoint; ``resume=True``
    continues.
    """
    cfg = _as_config(config, overrides)
    if cfg.stages or cfg.data.tasks:  # multi-task and sequential runs: tunesmith/sequential.py
        from tunesmith.sequential import train_stages

        return train_stages(cfg, resume)
    if cfg.model.head == "classification":  # a sequence-classification head: tunesmith/methods/seq_cls_run.py
        from tunesmith.methods import seq_cls_run

        return seq_cls_run.train(cfg, resume)
    method_runner = runner(cfg.method.name)
    if method_runner is not None:  # methods outside the training loop (feature_extraction)
        return method_runner.train(cfg)
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    data_cfg, prepare_reports = _run_prepare_steps(cfg, run_dir)
    data = prepare_data(data_cfg, tokenizer, cfg.seed)
    if prepare_reports:
        data.report["prepare"] = prepare_reports
    write_json_atomic(run_dir / "data_report.json", data.report)
    _print_data_report(data.report)
    if not data.train.input_ids:
        raise DataError(
            f"{cfg.data.train}: no training examples left after validation (see data_report.json)"
        )
    task = resolve_task(cfg, data.kind)
    model = _load_start_model(cfg)
    t_eval = time.perf_counter()
    base = _base_eval(run_dir, model, tokenizer, data, task, cfg) if cfg.eval.compare_base else {}
    before = before_training(run_dir, model, tokenizer, data, task, cfg)  # baselines + forgetting probes
    base_s = time.perf_counter() - t_eval
    seed_everything(cfg.seed)  # training randomness must not depend on whether the base was evaluated
    model = prepare_model(model, cfg.method)
    val = data.validation
    result = train_loop(
        model,
        TokenData(data.train.input_ids, data.train.labels),
        TokenData(val.input_ids, val.labels) if val is not None else None,
        cfg.train,
        seed=cfg.seed,
        run_dir=run_dir,
        pad_id=tokenizer.pad_token_id,
        resume=resume,
        make_optimizer=optimizer_for(cfg.method),
    )
    timings = {"base_eval_s": base_s, "train_s": result.train_seconds}
    evals: dict[str, dict[str, Any]] = {}
    if not result.interrupted:
        save_trained(model, tokenizer, run_dir)
        t_eval = time.perf_counter()
        tuned = _evaluate_all(model, tokenizer, data, task, cfg, save_as=run_dir / "predictions_tuned")
        timings["tuned_eval_s"] = time.perf_counter() - t_eval
        evals = {s: {"base": base.get(s), "tuned": m} if base else {"tuned": m} for s, m in tuned.items()}
    timings["total_s"] = time.perf_counter() - t_start
    summary = _summary(cfg, task, model, result, evals, data, timings)
    if not result.interrupted:  # evidence sections: baselines, forgetting, overfitting, gates
        tuned_evals = {split: v["tuned"] for split, v in evals.items()}
        sections = after_training(run_dir, model, tokenizer, data, task, cfg, before, tuned_evals, result)
        apply_evidence(summary, sections)
    write_json_atomic(run_dir / "summary.json", summary)
    from tunesmith.report.html import write_report

    write_report(run_dir)
    return summary


def _prepare_file(cfg: RunConfig, tokenizer: Any, path: str | Path) -> PreparedData:
    """Prepare an arbitrary file with a run's data settings, as its validation split."""
    data_cfg = cfg.data.model_copy(
        update={"train": str(path), "validation": None, "test": None, "validation_fraction": 0.0}
    )
    prepared = prepare_data(data_cfg, tokenizer, cfg.seed)
    return PreparedData(
        train=prepared.train,
        validation=prepared.train,
        test=None,
        kind=prepared.kind,
        label_names=prepared.label_names,
        report=prepared.report,
    )


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run on ``data`` (default: the run's own validation/test splits)."""
    method_runner = runner_for(read_run_config(run_dir))
    if method_runner is not None:
        return method_runner.evaluate(run_dir, data)
    model, tokenizer, cfg = load_trained(run_dir)
    if data is None and (cfg.stages or cfg.data.tasks):  # every task / stage's own splits
        from tunesmith.sequential import evaluate_stages

        return evaluate_stages(model, tokenizer, cfg, Path(run_dir))
    if data is not None:
        prepared = _prepare_file(cfg, tokenizer, data)
        if prepared.label_names is None:
            prepared.label_names = json.loads((Path(run_dir) / "data_report.json").read_text()).get(
                "label_names"
            )
    else:
        prepared = prepare_data(cfg.data, tokenizer, cfg.seed)
    task = resolve_task(cfg, prepared.kind)
    return _evaluate_all(model, tokenizer, prepared, task, cfg)


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
    method_runner = runner_for(read_run_config(run_dir))
    if method_runner is not None:
        return method_runner.predict(run_dir, data, out, fmt)
    label_names = json.loads((Path(run_dir) / "data_report.json").read_text()).get("label_names")
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
    from tunesmith.data.mixing import with_prefix
    from tunesmith.data.prompts import read_prompts
    from tunesmith.errors import ConfigError

    if fmt == "labels":  # before loading and generating anything
        raise ConfigError(_LABELS_NEED_CLASSIFICATION)
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
    from tunesmith.data.formats import Example

    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    examples = [Example(str(path), i, "classification", text=t, label=0) for i, t in enumerate(lines, 1)]
    return Split(examples, [], [])


_LABELS_NEED_CLASSIFICATION = "--format labels needs a classification run; this one generates text"
_LINE_BREAKS = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}


def _one_line(text: str) -> str:
    r"""``text`` on one line, reversibly, as in a Python string literal: ``\`` becomes ``\\``, a newline
    ``\n``, a carriage return ``\r``, and the rarer characters ``str.splitlines`` also breaks at (``\x0b``,
    ``\x0c``, ``\x1c``-``\x1e``, ``\x85``, ``\u2028``, ``\u2029``) their ``\xNN`` / ``\uNNNN`` escapes."""
    out = []
    for char in text:
        if char in _LINE_BREAKS:
            out.append(_LINE_BREAKS[char])
        elif char.splitlines() == [char]:
            out.append(char)
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return "".join(out)


def write_predictions(out: str | Path, rows: list[dict[str, Any]], fmt: str) -> Path:
    """Write prediction rows to ``out``.

    ``jsonl``: one JSON object per row. ``labels`` (classification rows only): one label id per line.
    ``text``: one prediction per line, line i for row i — the generated text with its line breaks escaped by
    :func:`_one_line` (JSONL keeps answers verbatim), or a classification row's label name. ``auto``:
    ``.txt`` gets ``labels`` for classification rows and ``text`` for generated ones, anything else JSONL.
    """
    from tunesmith.errors import ConfigError
    from tunesmith.io import write_jsonl_atomic

    classified = bool(rows) and "label" in rows[0]
    if fmt == "auto":
        fmt = ("labels" if classified else "text") if str(out).endswith(".txt") else "jsonl"
    if fmt == "labels":
        if rows and not classified:
            raise ConfigError(_LABELS_NEED_CLASSIFICATION)
        write_text_atomic(out, "".join(f"{row['label']}\n" for row in rows))
    elif fmt == "text":
        key = "label_name" if classified else "prediction"
        write_text_atomic(out, "".join(_one_line(str(row[key])) + "\n" for row in rows))
    elif fmt == "jsonl":
        write_jsonl_atomic(out, rows)
    else:
        raise ConfigError(f"unknown prediction format {fmt!r} (known: auto, jsonl, labels, text)")
    return Path(out)


__all__ = ["evaluate", "predict", "read_run_config", "train"]
