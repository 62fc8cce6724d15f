"""DoRA via PEFT (``LoraConfig(use_dora=True)``): LoRA on the weight's direction plus a trained magnitude.

Same target modules and saving as LoRA (a stock PEFT adapter); each step costs ~1.5-2x LoRA's because the
weight norm is recomputed in every forward.
"""

from __future__ import annotations

from typing import Any

from peft import get_peft_model

from tunesmith.methods.lora import lora_config


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    return get_peft_model(model, lora_config(method_cfg, model, use_dora=True))
