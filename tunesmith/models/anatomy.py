"""Where the parts of a causal LM or classifier live (decoder blocks, output head), for the methods that
freeze or wrap them and for the loop's FSDP units: one home below both."""

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
