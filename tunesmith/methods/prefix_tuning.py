"""Prefix tuning via PEFT: trained key/value prefixes in every attention layer; the model is frozen.

Like prompt tuning, the prefixes enter through PEFT's forward (as past key/values), so the training loss
takes the full-logits path for this method (see ``tunesmith.train.losses``).
"""

from __future__ import annotations

from typing import Any

from peft import PrefixTuningConfig, get_peft_model


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    config = PrefixTuningConfig(
        num_virtual_tokens=method_cfg.num_virtual_tokens,
        prefix_projection=method_cfg.projection,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
