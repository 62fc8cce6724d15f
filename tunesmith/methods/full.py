"""Full fine-tuning: every parameter trains. Costs ~4x the weights in optimizer state (AdamW fp32)."""

from __future__ import annotations

from typing import Any


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    for param in model.parameters():
        param.requires_grad_(True)
    return model
