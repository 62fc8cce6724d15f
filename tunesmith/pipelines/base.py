"""The one shape of a training run, written once; run kinds fill in its steps.

    prepare data -> start model -> baselines -> fit -> save -> evaluate -> summarise -> report

:meth:`Pipeline.train` runs the steps in that order, writes ``config.yaml`` first and ``summary.json`` and
``report.html`` last, and skips save/evaluate/evidence when Ctrl-C interrupted the fit (``--resume``
continues).
A run kind (``lm``, ``head``, ``features``, ``staged``; registered in :mod:`tunesmith.pipelines`) overrides
the steps it does differently. A new objective (a reward model, DPO, GRPO) is a new kind here, or a new loss
passed to the loop by an existing kind, never a copy of this sequence.
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate
import numpy as np
import peft
import torch
import transformers

import tunesmith
from tunesmith.config import RunConfig
from tunesmith.data.formats import read_source
from tunesmith.data.prepare import PreparedData
from tunesmith.data.tools.pipeline import run_prepare_steps
from tunesmith.errors import ConfigError
from tunesmith.evaluate.evidence import apply_evidence
from tunesmith.io import write_jsonl_atomic, write_text_atomic
from tunesmith.methods import count_parameters
from tunesmith.models.loading import load_tokenizer
from tunesmith.report.html import write_report
from tunesmith.runs import RunDir, Summary
from tunesmith.tracking import start_tracking
from tunesmith.train.distributed import env_world
from tunesmith.train.hooks import LoopHooks
from tunesmith.train.loop import TrainResult


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Library versions a run's numbers depend on (summary.json ``versions``)."""
    return {
        "tunesmith": tunesmith.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def print_data_report(report: dict[str, Any]) -> None:
    if not env_world().main:  # every rank prepares the same data; one says so
        return
    for split, counts in report.get("splits", {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        print(f"tunesmith: data {split}: {shown}")


def apply_prepare_steps(cfg: RunConfig, run_dir: RunDir) -> tuple[Any, list[dict[str, Any]]]:
    """Apply ``data.prepare`` steps to the training file; the run trains on the last step's output."""
    if not cfg.data.prepare or cfg.data.train is None:
        return cfg.data, []
    prepared, reports = run_prepare_steps(
        cfg.data.train,
        cfg.data.prepare,
        run_dir.prepared,
        on_bad_row=cfg.data.on_bad_row,
        model=cfg.model.name,  # augment's paraphrases come from the base model being tuned
    )
    return cfg.data.model_copy(update={"train": str(prepared)}), reports


def data_hashes(data: PreparedData) -> dict[str, str | None]:
    return {k: v.get("sha256") for k, v in data.report.get("files", {}).items()}


def summarise(
    cfg: RunConfig,
    *,
    task: str,
    params: tuple[int, int],
    evals: dict[str, Any],
    train: dict[str, Any],
    timings: dict[str, float],
    peak_memory_mb: float | None,
    hashes: dict[str, str | None],
    interrupted: bool = False,
    before_train: dict[str, Any] | None = None,
    after_train: dict[str, Any] | None = None,
    status: str | None = None,
) -> Summary:
    """``summary.json``, built here for every run kind (key order is part of the file's format).

    Args:
        params: (trainable, total) parameter counts.
        before_train: Kind-specific sections placed before ``train`` (multi-task: ``tasks``).
        after_train: Kind-specific sections placed after ``train`` (``best``, ``features``).
        status: Overrides ``completed`` / ``interrupted`` (``pruned``: a sweep's pruner stopped the loop).
    """
    trainable, total = params
    summary: dict[str, Any] = {
        "name": cfg.name,
        "status": status or ("interrupted" if interrupted else "completed"),
        "method": cfg.method.name,
        "model": cfg.model.name,
        "task": task,
        "trainable_params": trainable,
        "total_params": total,
        "eval": evals,
        **(before_train or {}),
        "train": train,
        **(after_train or {}),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "peak_memory_mb": peak_memory_mb,
        "versions": versions(),
        "data_hashes": hashes,
    }
    return summary  # type: ignore[return-value]


def loop_summary(
    run: Run, model: Any, task: str, result: TrainResult, evals: dict[str, Any], data: PreparedData
) -> Summary:
    """The summary of a run trained by the loop (lm and head kinds)."""
    tokens_per_s = result.train_tokens / result.train_seconds if result.train_seconds else 0.0
    train = {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "tokens": result.train_tokens,
        "tokens_per_s": round(tokens_per_s, 1),
        "stopped_early": result.stopped_early,
        "restored_best": result.restored_best,
        "final_val_loss": result.final_val_loss,
    }
    best = {
        "step": result.best_step,
        "val_loss": result.best_val_loss,
        "metric": run.cfg.train.best_metric,
        "value": result.best_score,
    }
    return summarise(
        run.cfg,
        task=task,
        params=count_parameters(model),
        evals=evals,
        train=train,
        timings=run.timings,
        peak_memory_mb=result.peak_memory_mb,
        hashes=data_hashes(data),
        interrupted=result.interrupted,
        after_train={"best": best},
        status="pruned" if result.pruned else None,
    )


LABELS_NEED_CLASSIFICATION = "--format labels needs a classification run; this one generates text"
_LINE_BREAKS = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}


def one_line(text: str) -> str:
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


def label_rows(probs: Any, label_names: list[str]) -> list[dict[str, Any]]:
    """Prediction rows of a classifier: the most probable label id, its name and every label's probability."""
    rows = []
    for p in probs:
        best = int(p.argmax())
        rows.append(
            {"label": best, "label_name": label_names[best], "probs": [round(float(x), 6) for x in p]}
        )
    return rows


def write_predictions(out: str | Path, rows: list[dict[str, Any]], fmt: str) -> Path:
    """Write prediction rows to ``out``.

    ``jsonl``: one JSON object per row. ``labels`` (classification rows only): one label id per line.
    ``text``: one prediction per line, line i for row i — the generated text with its line breaks escaped by
    :func:`one_line` (JSONL keeps answers verbatim), or a classification row's label name. ``auto``:
    ``.txt`` gets ``labels`` for classification rows and ``text`` for generated ones, anything else JSONL.
    """
    classified = bool(rows) and "label" in rows[0]
    if fmt == "auto":
        fmt = ("labels" if classified else "text") if str(out).endswith(".txt") else "jsonl"
    if fmt == "labels":
        if rows and not classified:
            raise ConfigError(LABELS_NEED_CLASSIFICATION)
        write_text_atomic(out, "".join(f"{row['label']}\n" for row in rows))
    elif fmt == "text":
        key = "label_name" if classified else "prediction"
        write_text_atomic(out, "".join(one_line(str(row[key])) + "\n" for row in rows))
    elif fmt == "jsonl":
        write_jsonl_atomic(out, rows)
    else:
        raise ConfigError(f"unknown prediction format {fmt!r} (known: auto, jsonl, labels, text)")
    return Path(out)


def read_texts(path: str | Path, cfg: RunConfig, label_names: list[str]) -> list[str]:
    """Inputs in file order: plain .txt is one text per line (blank lines included, so ids stay aligned)."""
    if str(path).endswith(".txt"):
        return Path(path).read_text(encoding="utf-8").splitlines()
    return [ex.text or "" for ex in read_source(path, "auto", cfg.data.on_bad_row, label_names).examples]


@dataclass
class Run:
    """What every step of one training run shares."""

    cfg: RunConfig
    dir: RunDir
    tokenizer: Any
    resume: bool = False
    t_start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    task: str = "generation"
    before: Any = None  # what the baselines step returned
    hooks: LoopHooks = field(default_factory=LoopHooks)  # the loop's observers: trackers, a sweep's pruner


@dataclass
class Fit:
    """What the fit step produced: the trained model and the loop's result (None: nothing trained)."""

    model: Any
    result: TrainResult | None
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """A run kind. Subclasses override the steps; :meth:`train` is the sequence, written once."""

    name = "base"
    seed_first = True
    """Seed before anything else (lm, staged); the head and feature kinds seed where their models start."""
    distributes = False
    """Trains under ``tunesmith train --nproc N`` / torchrun (one loop call; see :meth:`train_worker`)."""

    def check(self, cfg: RunConfig) -> None:
        """Fail before any work on a setting this kind cannot honour."""

    def resolve(self, cfg: RunConfig) -> RunConfig:
        """The config as this kind runs it (written to ``config.yaml``); e.g. a reward model's scalar head."""
        return cfg

    def train(self, cfg: RunConfig, resume: bool = False, hooks: LoopHooks | None = None) -> Summary:
        """Run the kind end to end; returns the summary (also written to ``summary.json``).

        ``hooks`` observe the training loop (a sweep's pruner); the config's trackers are added to them.
        """
        self.check(cfg)
        cfg = self.resolve(cfg)
        t_start = time.perf_counter()
        if self.seed_first:
            seed_everything(cfg.seed)
        world = env_world()
        if world.size > 1 and not self.distributes:
            raise ConfigError(
                f"run kind {self.name!r} does not train on several processes; run it without --nproc "
                "(lm and head runs do)"
            )
        if not world.main:
            return self.train_worker(cfg, resume, t_start)
        run_dir = RunDir(cfg.run_dir).start(cfg)
        tracking = start_tracking(cfg, run_dir)
        try:
            tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
            run = Run(cfg, run_dir, tokenizer, resume, t_start)
            run.hooks = LoopHooks(on_log=[tracking.log_row]).plus(hooks)
            summary = self.run_steps(run)
        except BaseException:
            tracking.fail()
            raise
        tracking.finish(dict(summary))
        return summary

    def train_worker(self, cfg: RunConfig, resume: bool, t_start: float) -> Summary:
        """A rank other than 0 of a distributed run: the same data and model, its share of the training,
        then done. Rank 0 alone evaluates, saves and reports; nothing here writes the run directory."""
        run = Run(cfg, RunDir(cfg.run_dir), load_tokenizer(cfg.model.name, cfg.model.trust_remote_code))
        run.resume, run.t_start = resume, t_start
        data = self.prepare(run)
        fit = self.fit(run, self.start_model(run, data), data)
        return {"name": cfg.name, "status": "worker" if not fit.interrupted else "interrupted"}

    def run_steps(self, run: Run) -> Summary:
        """The steps in order, from the data to ``summary.json`` and ``report.html``."""
        data = self.prepare(run)
        model = self.start_model(run, data)
        t_eval = time.perf_counter()
        before = run.before = self.baselines(run, model, data)
        if before is not None:
            run.timings["base_eval_s"] = time.perf_counter() - t_eval
        fit = self.fit(run, model, data)
        evals: dict[str, Any] = {}
        if not fit.interrupted:
            self.save(run, fit)
            evals = self.evaluate(run, fit, data, before)
        run.timings["total_s"] = time.perf_counter() - run.t_start
        summary = self.summarise(run, fit, data, evals)
        if not fit.interrupted:
            sections = self.evidence(run, fit, data, before, evals)
            if sections is not None:
                apply_evidence(summary, sections)  # type: ignore[arg-type]
        run.dir.write_summary(summary)
        write_report(run.dir.path)
        return summary

    # The steps, in order. Each kind implements the ones it needs.
    def prepare(self, run: Run) -> Any:
        """Read, clean, render and tokenize the data; write ``data_report.json``."""
        raise NotImplementedError

    def start_model(self, run: Run, data: Any) -> Any:
        """The weights training starts from."""
        raise NotImplementedError

    def baselines(self, run: Run, model: Any, data: Any) -> Any:
        """The base model's numbers before training (None: this kind has none, and no ``base_eval_s``)."""
        return None

    def fit(self, run: Run, model: Any, data: Any) -> Fit:
        raise NotImplementedError

    def save(self, run: Run, fit: Fit) -> None:
        """Write the trained result into the run directory."""
        raise NotImplementedError

    def evaluate(self, run: Run, fit: Fit, data: Any, before: Any) -> dict[str, Any]:
        """``{split: {"base": metrics, "tuned": metrics}}``; predictions go to the run directory."""
        return {}

    def summarise(self, run: Run, fit: Fit, data: Any, evals: dict[str, Any]) -> Summary:
        raise NotImplementedError

    def evidence(self, run: Run, fit: Fit, data: Any, before: Any, evals: dict[str, Any]) -> Any:
        """Summary sections after training (baselines, forgetting, overfitting, gates), or None."""
        return None
