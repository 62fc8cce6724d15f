"""The run directory: the one owner of a run's paths and files, and of loading what a run trained.

    runs/<name>/config.yaml data_report.json metrics.jsonl summary.json checkpoints/ adapter/|model/
                report.html predictions_{base,tuned}_<split>.jsonl base_eval.json prepared/ stages/
                classifier/ tensorboard/

Every other module asks :class:`RunDir` for a path (``RunDir(path).summary``) instead of spelling a file
name. Loading a trained model goes through loaders registered by the methods (``tunesmith.methods``
registers them when imported): a loader per ``model.head``, extra base-loading options per method (qlora's
4-bit base) and adapter formats beside PEFT's (the bottleneck adapters), so this module imports no method.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import yaml

from tunesmith.config import RunConfig, config_from_dict, dump_config
from tunesmith.errors import RunError
from tunesmith.io import atomic_dir, write_json_atomic, write_text_atomic
from tunesmith.models.loading import load_causal_lm, load_tokenizer

CONFIG = "config.yaml"
DATA_REPORT = "data_report.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MODEL = "model"
CLASSIFIER = "classifier"
BASE_EVAL = "base_eval.json"
BASE_EVAL_TASKS = "base_eval_tasks.json"
PREPARED = "prepared"
REFERENCE_LOGPS = "reference_logps.safetensors"
STAGES = "stages"
STAGE_RECORD = "stage.json"
STAGE_END = "end"
STOP_REQUEST = "STOP"
"""Created by another process to stop the run at the next step boundary (checkpointed, resumable)."""
TENSORBOARD = "tensorboard"


def writes_files() -> bool:
    """Whether this process writes run directories: the only process, or rank 0 of a distributed run
    (torchrun sets ``RANK``); the other ranks train and read, never write."""
    return os.environ.get("RANK", "0") == "0"


class Summary(TypedDict, total=False):
    """``summary.json``: what a run reports. Every run kind fills the common keys; the rest are per kind."""

    name: str
    status: str  # completed | interrupted
    method: str
    model: str
    task: str  # generation | classification | language_modeling | mixed
    trainable_params: int
    total_params: int
    eval: dict[str, Any]  # {split: {"base": metrics, "tuned": metrics}}
    train: dict[str, Any]  # steps, tokens, ...
    best: dict[str, Any]
    timings: dict[str, float]
    peak_memory_mb: float | None
    versions: dict[str, str]
    data_hashes: dict[str, str | None]
    tasks: dict[str, Any]  # multi-task / staged runs: per task and split
    stages: list[dict[str, Any]]
    forgetting_matrix: dict[str, Any]
    mixing: dict[str, Any]
    head: dict[str, Any]  # classification-head runs
    features: dict[str, Any]  # feature-extraction runs
    baselines: dict[str, Any]
    forgetting: dict[str, Any]
    overfitting: dict[str, Any]
    gates: dict[str, Any]


class RunDir:
    """Paths and files of one run directory (it need not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / CONFIG)
    data_report = property(lambda self: self.path / DATA_REPORT)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    report = property(lambda self: self.path / REPORT)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    adapter = property(lambda self: self.path / ADAPTER)
    model = property(lambda self: self.path / MODEL)
    classifier = property(lambda self: self.path / CLASSIFIER)
    base_eval = property(lambda self: self.path / BASE_EVAL)
    base_eval_tasks = property(lambda self: self.path / BASE_EVAL_TASKS)
    prepared = property(lambda self: self.path / PREPARED)
    reference_logps = property(lambda self: self.path / REFERENCE_LOGPS)
    stage_record = property(lambda self: self.path / STAGE_RECORD)
    stage_end = property(lambda self: self.path / STAGE_END)
    stop_request = property(lambda self: self.path / STOP_REQUEST)
    tensorboard = property(lambda self: self.path / TENSORBOARD)

    def stage(self, k: int, name: str) -> RunDir:
        """Stage ``k`` (0-based) of a sequential run: ``stages/01-<name>/``."""
        return RunDir(self.path / STAGES / f"{k + 1:02d}-{name}")

    def predictions(self, which: str) -> Path:
        """The prefix of prediction files: ``predictions_<which>`` + ``_<split>.jsonl`` (base|tuned)."""
        return self.path / f"predictions_{which}"

    def saved(self) -> Path | None:
        """``model/`` or ``adapter/``, whichever the run saved (None before it finished)."""
        for folder in (self.model, self.adapter):
            if folder.is_dir():
                return folder
        return None

    def start(self, cfg: RunConfig) -> RunDir:
        """Create the directory and write the resolved ``config.yaml`` (every default spelled out)."""
        if not writes_files():
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config, dump_config(cfg))
        return self

    def read_config(self) -> RunConfig:
        if not self.config.exists():
            raise RunError(
                f"{self.path} is not a run directory (no config.yaml); train one with `tunesmith train`"
            )
        return config_from_dict(yaml.safe_load(self.config.read_text(encoding="utf-8")), str(self.config))

    def write_data_report(self, report: dict[str, Any]) -> None:
        if not writes_files():
            return
        write_json_atomic(self.data_report, report)

    def read_data_report(self) -> dict[str, Any]:
        return json.loads(self.data_report.read_text(encoding="utf-8"))

    def label_names(self) -> list[str] | None:
        """The run's label names in id order (``data_report.json``), or None for a run without labels."""
        return self.read_data_report().get("label_names") if self.data_report.exists() else None

    def require_label_names(self) -> list[str]:
        names = self.label_names()
        if not names:
            raise RunError(f"{self.data_report} has no label_names; is this a classification run?")
        return names

    def write_summary(self, summary: Summary | dict[str, Any]) -> None:
        write_json_atomic(self.summary, summary)

    def read_summary(self) -> Summary:
        return json.loads(self.summary.read_text(encoding="utf-8"))

    def read_metrics(self) -> list[dict[str, Any]]:
        """``metrics.jsonl`` rows ([] before the first logged step)."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run was trained with."""
    return RunDir(run_dir).read_config()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_metrics()


# --- loaders, registered by tunesmith.methods ---------------------------------------------------------

HeadLoader = Callable[[RunDir], Callable[..., Any]]
"""run dir -> a drop-in for ``load_causal_lm(name, dtype, trust_remote_code, **options)`` for that head."""


@dataclass
class AdapterFormat:
    """An adapter kind saved to ``adapter/`` that stock PEFT does not load (PEFT's own is the default)."""

    marker: str  # the file in adapter/ that identifies it
    owns: Callable[[Any], bool]  # is this model wrapped in this kind of adapter?
    save: Callable[[Any, Path], None]
    load: Callable[[Any, Path, bool], Any]  # (base, folder, merge) -> model


HEAD_LOADERS: dict[str, HeadLoader] = {"lm": lambda run: load_causal_lm}
LOAD_OPTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {}
ADAPTER_FORMATS: list[AdapterFormat] = []
AFTER_LOAD: dict[str, Callable[[Any], Any]] = {}


def register_head(head: str, loader: HeadLoader) -> None:
    """``model.head`` value -> how its saved model (or its base) is loaded."""
    HEAD_LOADERS[head] = loader


def register_load_options(method: str, options: Callable[[Any], dict[str, Any]]) -> None:
    """Extra ``from_pretrained`` arguments a method needs for its base (qlora: 4-bit quantization)."""
    LOAD_OPTIONS[method] = options


def register_adapter_format(fmt: AdapterFormat) -> None:
    ADAPTER_FORMATS.append(fmt)


def register_after_load(method: str, fix_up: Callable[[Any], Any]) -> None:
    """A method's fix-up of a model reloaded with its adapter (qlora: the 4-bit kernels training used)."""
    AFTER_LOAD[method] = fix_up


def load_options(method_cfg: Any) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments the method needs for its base model (usually none)."""
    option_fn = LOAD_OPTIONS.get(method_cfg.name)
    return option_fn(method_cfg) if option_fn is not None else {}


def save_trained(model: Any, tokenizer: Any, run_dir: str | Path) -> Path:
    """Save the result where stock libraries load it: ``adapter/`` (PEFT) or ``model/`` (transformers)."""
    run = RunDir(run_dir)
    fmt = next((f for f in ADAPTER_FORMATS if f.owns(model)), None)
    target = run.adapter if fmt is not None or hasattr(model, "peft_config") else run.model
    with atomic_dir(target) as tmp:
        if fmt is not None:  # tunesmith's own adapters (no stock library loads them)
            fmt.save(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def _load_adapter(base: Any, folder: Path, merge: bool) -> Any:
    """The base plus whatever adapter ``folder`` holds: any PEFT type (LoRA, DoRA, IA3, prompt/prefix
    tuning; read from adapter_config.json) or a registered format (the bottleneck adapters)."""
    for fmt in ADAPTER_FORMATS:
        if (folder / fmt.marker).exists():
            return fmt.load(base, folder, merge)
    from peft import PeftModel  # deferred: peft pulls in torch and transformers; reading a run dir does not

    model = PeftModel.from_pretrained(base, str(folder))
    return model.merge_and_unload() if merge else model


def load_trained(run_dir: str | Path, merge: bool = False) -> tuple[Any, Any, RunConfig]:
    """(model, tokenizer, config) of a finished run: the base plus ``adapter/``, or ``model/``."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    if cfg.model.head not in HEAD_LOADERS:
        raise RunError(f"{run_dir}: no loader for model.head {cfg.model.head!r}; import tunesmith.methods")
    load_model = HEAD_LOADERS[cfg.model.head](run)
    trust = cfg.model.trust_remote_code
    if run.model.is_dir():
        model = load_model(str(run.model), cfg.model.dtype, trust)
        tokenizer = load_tokenizer(str(run.model), trust)
    elif run.adapter.is_dir():
        options = load_options(cfg.method)  # e.g. qlora: the adapter goes back onto the same 4-bit base
        base = load_model(cfg.model.name, cfg.model.dtype, trust, **options)
        model = _load_adapter(base, run.adapter, merge)
        after_load = AFTER_LOAD.get(cfg.method.name)
        if after_load is not None:  # qlora: the kernels training used, so predictions match on every CPU
            after_load(model)
        tokenizer = load_tokenizer(str(run.adapter), trust)
    else:
        raise RunError(f"{run_dir} has no adapter/ or model/: the run did not finish (try --resume)")
    model.eval()
    return model, tokenizer, cfg


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
