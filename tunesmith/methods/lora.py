"""LoRA via PEFT: low-rank updates on the chosen linear layers; the base stays frozen.

Saved as a stock PEFT adapter (``adapter/``) that loads with ``PeftModel.from_pretrained`` and no tunesmith.
DoRA and QLoRA reuse :func:`lora_config` with their own extras.
"""

from __future__ import annotations

from typing import Any


def lora_config(method_cfg: Any, **extra: Any) -> Any:
    """The PEFT ``LoraConfig`` for a LoRA-family method section (``extra`` e.g. ``use_dora=True``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=method_cfg.r,
        lora_alpha=method_cfg.alpha,
        lora_dropout=method_cfg.dropout,
        target_modules=method_cfg.target_modules,
        task_type="CAUSAL_LM",
        **extra,
    )


def prepare(model: Any, method_cfg: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(method_cfg))
