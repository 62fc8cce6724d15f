"""A tiny served run for the serve tests: a random 2-layer Llama base on disk and a chat LoRA run on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.conftest import make_tiny_llama
from tunesmith.config import RunConfig, dump_config


def write_chat_run(
    root: Path, tokenizer: Any, train_rows: list[dict[str, Any]], name: str = "shop-bot"
) -> Path:
    """``root/base`` (the base) and ``root/<name>`` (a LoRA run with random non-zero weights, so it answers
    differently from its base), whose config names ``root/train.jsonl`` (``train_rows``) as training data."""
    from peft import LoraConfig, get_peft_model

    base_dir = root / "base"
    make_tiny_llama(len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    train_file = root / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    run_dir = root / name
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(make_tiny_llama(len(tokenizer)), lora).save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")
    cfg = RunConfig(name=name, model={"name": str(base_dir)}, data={"train": str(train_file)})
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "summary.json").write_text(json.dumps({"task": "generation"}))
    (run_dir / "data_report.json").write_text(json.dumps({"label_names": None}))
    return run_dir
