"""LoRA via PEFT: low-rank updates on the chosen linear layers; the base stays frozen.

Saved as a stock PEFT adapter (``adapter/``) that loads with ``PeftModel.from_pretrained`` and no tunesmith.
"""

from __future__ import annotations

from typing import Any


def prepare(model: Any, method_cfg: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=method_cfg.r,
        lora_alpha=method_cfg.alpha,
        lora_dropout=method_cfg.dropout,
        target_modules=method_cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
