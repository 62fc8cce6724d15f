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

    is_peft = hasattr(model, "peft_config")
    target = run_dir / ("adapter" if is_peft else "model")
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def load_trained(run_dir: str | Path, merge: bool = False) -> tuple[Any, Any, RunConfig]:
    """(model, tokenizer, config) of a finished run: the base plus ``adapter/``, or ``model/``."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if (run_dir / "model").is_dir():
        model = load_causal_lm(str(run_dir / "model"), cfg.model.dtype, cfg.model.trust_remote_code)
        tokenizer = load_tokenizer(str(run_dir / "model"), cfg.model.trust_remote_code)
    elif (run_dir / "adapter").is_dir():
        from peft import PeftModel

        base = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code)
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
        if merge:
            model = model.merge_and_unload()
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
