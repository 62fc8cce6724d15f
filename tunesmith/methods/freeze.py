"""Partial freezing: train only the last N transformer blocks and/or the output head.

With ``train_last_n_blocks: 0`` and ``train_head: true`` this is head-only fine-tuning. On models with tied
input/output embeddings (SmolLM2), training the head also moves the input embeddings: they are one tensor.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError


def transformer_blocks(model: Any) -> Any:
    """The ModuleList of decoder blocks of a causal LM (Llama/Mistral/Qwen/GPT-2 naming)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    for name in ("layers", "h", "blocks"):
        blocks = getattr(base, name, None)
        if blocks is not None:
            return blocks
    raise ConfigError(f"method freeze: cannot find the transformer blocks of {type(model).__name__}")


def output_head(model: Any) -> Any:
    """The module that maps hidden states to outputs: ``lm_head`` of a causal LM, or ``score`` of a
    sequence-classification model (``model.head: classification``), which has no output embeddings."""
    head = model.get_output_embeddings()
    if head is None:
        head = getattr(model, "score", None)
    if head is None:
        raise ConfigError(f"method freeze: cannot find the output head of {type(model).__name__}")
    return head


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
