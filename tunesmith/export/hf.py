"""Hugging Face formats: ``merged`` (one standalone model) and ``adapter`` (the PEFT adapter alone).

A merged export loads with stock transformers and no tunesmith or PEFT installed::

    model = AutoModelForCausalLM.from_pretrained("exports/merged")
    tokenizer = AutoTokenizer.from_pretrained("exports/merged")   # chat template included
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError
from tunesmith.export.common import ExportOptions, Source, load_merged

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def set_generation_stop(gen: Any, tokenizer: Any) -> None:
    """Make stock ``generate()`` stop where the chat template ends a turn (the tokenizer's eos).

    Converted or hub configs sometimes name another eos; a model that never stops is the usual symptom.
    ``gen`` is a ``GenerationConfig``, updated in place.
    """
    eos = tokenizer.eos_token_id
    if eos is not None:
        current = gen.eos_token_id
        ids = [] if current is None else list(current) if isinstance(current, list) else [current]
        if eos not in ids:
            gen.eos_token_id = [*ids, eos] if ids else eos
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def save_hf_model(model: Any, tokenizer: Any, out: Path) -> None:
    """Weights as safetensors, config, generation config (generative models only), tokenizer and chat
    template, into ``out``."""
    if getattr(model, "generation_config", None) is not None:  # a sequence classifier has none
        set_generation_stop(model.generation_config, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def export_merged(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """LoRA folded into the base (``merge_and_unload``); a full-model run is re-saved as a clean copy."""
    model, tokenizer = load_merged(source)
    save_hf_model(model, tokenizer, out)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"merged_from": source.kind, "dtype": dtype, "architecture": type(model).__name__}


def export_adapter(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """A byte-for-byte copy of the run's PEFT adapter (and tokenizer); the manifest names its base."""
    if source.kind != "adapter":
        raise RunError(
            f"{source.run_dir} is a full fine-tune (model/), it has no adapter; "
            "use --format merged (or gguf/int8) instead"
        )
    files = [p for p in source.artifact_dir.rglob("*") if p.is_file()]
    unsafe = [p.name for p in files if p.suffix in _PICKLE_SUFFIXES]
    if unsafe:
        raise RunError(
            f"{source.artifact_dir} holds pickle files {unsafe}; tunesmith exports safetensors only"
        )
    if not (source.artifact_dir / "adapter_config.json").exists():
        raise RunError(f"{source.artifact_dir} has no adapter_config.json; retrain or restore the run")
    shutil.copytree(source.artifact_dir, out, dirs_exist_ok=True)
    adapter_cfg = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    keys = ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path")
    details = {k: adapter_cfg.get(k) for k in keys}
    if isinstance(details["target_modules"], list):
        details["target_modules"] = sorted(details["target_modules"])
    return details
