"""Partial freezing: train only the last N transformer blocks and/or the output head.

With ``train_last_n_blocks: 0`` and ``train_head: true`` this is head-only fine-tuning. On models with tied
input/output embeddings (SmolLM2), training the head also moves the input embeddings: they are one tensor.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.models.anatomy import output_head, transformer_blocks


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    for param in model.parameters():
        param.requires_grad_(False)
    blocks = transformer_blocks(model)
    n = method_cfg.train_last_n_blocks
    if n > len(blocks):
        raise ConfigError(f"method.train_last_n_blocks={n} but the model has only {len(blocks)} blocks")
    for block in list(blocks)[len(blocks) - n :]:
        block.requires_grad_(True)
    if method_cfg.train_head:
        output_head(model).requires_grad_(True)
    if method_cfg.train_norm:
        base = getattr(model, "model", None) or getattr(model, "transformer", None)
        norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
        if norm is not None:
            norm.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("method freeze trains nothing: set train_last_n_blocks > 0 or train_head: true")
    return model
