"""The run directory: what a run writes, and how any later step (eval, predict, chat, export) loads it.

runs/<name>/config.yaml data_report.json metrics.jsonl summary.json checkpoints/ adapter/|model/ report.html
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import RunConfig, config_from_dict
from tunesmith.errors import RunError
from tunesmith.models.loading import load_causal_lm, load_tokenizer


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml); train one with `tunesmith train`")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def save_trained(model: Any, tokenizer: Any, run_dir: Path) -> Path:
    """Save the result where stock libraries load it: ``adapter/`` (PEFT) or ``model/`` (transformers)."""
    from tunesmith.io import atomic_dir
    from tunesmith.methods import adapter as bottleneck

    is_adapter = hasattr(model, "peft_config") or bottleneck.is_adapted(model)
    target = run_dir / ("adapter" if is_adapter else "model")
    with atomic_dir(target) as tmp:
        if bottleneck.is_adapted(model):  # tunesmith's own bottleneck adapters (no stock library loads them)
            bottleneck.save(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def _load_adapter(base: Any, folder: Path, merge: bool) -> Any:
    """The base plus whatever adapter ``folder`` holds: any PEFT type (LoRA, DoRA, IA3, prompt/prefix
    tuning; read from adapter_config.json) or tunesmith's bottleneck adapters."""
    from tunesmith.methods import adapter as bottleneck

    if (folder / bottleneck.CONFIG_NAME).exists():
        if merge:
            raise RunError(
                f"{folder}: bottleneck adapters are nonlinear and cannot be merged into the base weights; "
                "export needs a LoRA-family method (lora, dora, qlora) or full/freeze"
            )
        return bottleneck.load(base, folder)
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(folder))
    return model.merge_and_unload() if merge else model


def load_trained(run_dir: str | Path, merge: bool = False) -> tuple[Any, Any, RunConfig]:
    """(model, tokenizer, config) of a finished run: the base plus ``adapter/``, or ``model/``."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    load_model = load_causal_lm
    if cfg.model.head == "classification":  # AutoModelForSequenceClassification (tunesmith.methods.seq_cls)
        from tunesmith.methods.seq_cls import head_loader

        load_model = head_loader(run_dir)
    if (run_dir / "model").is_dir():
        model = load_model(str(run_dir / "model"), cfg.model.dtype, cfg.model.trust_remote_code)
        tokenizer = load_tokenizer(str(run_dir / "model"), cfg.model.trust_remote_code)
    elif (run_dir / "adapter").is_dir():
        from tunesmith.methods import load_options

        options = load_options(cfg.method)  # e.g. qlora: the adapter goes back onto the same 4-bit base
        base = load_model(cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code, **options)
        model = _load_adapter(base, run_dir / "adapter", merge)
        if options:  # a 4-bit base: the kernels training used, so predictions are the same on every CPU
            from tunesmith.methods.qlora import keep_differentiable_kernels

            keep_differentiable_kernels(model)
        tokenizer = load_tokenizer(str(run_dir / "adapter"), cfg.model.trust_remote_code)
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
