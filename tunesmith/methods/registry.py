"""The method registry: name -> ``prepare(model, method_cfg, head)``, plus the optimizer a method asks for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from peft.optimizers import create_loraplus_optimizer

from tunesmith.methods import adapter, dora, freeze, full, ia3, lora, prefix_tuning, prompt_tuning, qlora

PrepareFn = Callable[[Any, Any, str], Any]
"""(model, method section, head kind) -> the model to train."""

METHODS: dict[str, PrepareFn] = {
    "full": full.prepare,
    "freeze": freeze.prepare,
    "lora": lora.prepare,
    "dora": dora.prepare,
    "ia3": ia3.prepare,
    "prompt_tuning": prompt_tuning.prepare,
    "prefix_tuning": prefix_tuning.prepare,
    "qlora": qlora.prepare,
    "adapter": adapter.prepare,
}


def prepare_model(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    """Apply the configured method to ``model`` (an ``lm`` or a ``classification`` head model) and return
    the model to train."""
    return METHODS[method_cfg.name](model, method_cfg, head)


def optimizer_for(method_cfg: Any) -> Callable[[Any, Any], Any] | None:
    """The method's own optimizer factory for ``train_loop(make_optimizer=...)``, or None for the loop's
    plain AdamW: LoRA+ parameter groups (B matrices at ``loraplus_lr_ratio`` x ``train.lr``, via PEFT) when
    the method sets that ratio."""
    ratio = getattr(method_cfg, "loraplus_lr_ratio", None)
    if ratio is None:
        return None

    def loraplus(model: Any, train_cfg: Any) -> Any:
        return create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=train_cfg.lr,
            loraplus_lr_ratio=ratio,
            loraplus_weight_decay=train_cfg.weight_decay,
        )

    return loraplus


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
