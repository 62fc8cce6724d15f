"""Prompt tuning via PEFT: ``num_virtual_tokens`` trained embeddings prepended to every input.

Only the virtual tokens train (randomly initialised). The model forward must go through PEFT (it inserts
them), so the training loss takes the full-logits path for this method (see ``tunesmith.train.losses``).
"""

from __future__ import annotations

from typing import Any

from peft import PromptTuningConfig, get_peft_model


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    config = PromptTuningConfig(num_virtual_tokens=method_cfg.num_virtual_tokens, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
