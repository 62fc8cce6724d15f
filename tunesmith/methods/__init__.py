"""Fine-tuning methods, registered by name. Each module exposes ``prepare(model, method_cfg) -> model``.

``prepare`` freezes/unfreezes or wraps the model so exactly the method's parameters train; the loop never
needs to know which method ran. Adding a method: a config class in ``tunesmith.config`` and one module here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.methods import freeze, full, lora

PrepareFn = Callable[[Any, Any], Any]

METHODS: dict[str, PrepareFn] = {
    "full": full.prepare,
    "freeze": freeze.prepare,
    "lora": lora.prepare,
}


def prepare_model(model: Any, method_cfg: Any) -> Any:
    """Apply the configured method to ``model`` and return the model to train."""
    return METHODS[method_cfg.name](model, method_cfg)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
