"""LoRA via PEFT: low-rank updates on the chosen linear layers; the base stays frozen.

Saved as a stock PEFT adapter (``adapter/``) that loads with ``PeftModel.from_pretrained`` and no tunesmith.
DoRA and QLoRA reuse :func:`lora_config` with their own extras.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model


def linear_module_names(model: Any) -> list[str]:
    """Distinct names of the linear layers inside the transformer blocks (q_proj, up_proj, ...), sorted."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
    )


TASK_TYPES = {"lm": "CAUSAL_LM", "classification": "SEQ_CLS"}
"""``model.head`` -> PEFT task type. ``SEQ_CLS`` makes PEFT add ``score`` to ``modules_to_save`` (trained in
full, saved with the adapter) and keep the head out of ``all-linear`` targets."""


def lora_config(method_cfg: Any, model: Any, head: str = "lm", **extra: Any) -> Any:
    """The PEFT ``LoraConfig`` for a LoRA-family method section and head (``extra``: ``use_dora=True``)."""
    targets = method_cfg.target_modules
    if method_cfg.last_layers is not None:
        n_layers = model.config.num_hidden_layers
        first = max(0, n_layers - method_cfg.last_layers)
        extra["layers_to_transform"] = list(range(first, n_layers))
        if targets == "all-linear":  # PEFT takes a layer subset only with explicit module names
            targets = linear_module_names(model)
    return LoraConfig(
        r=method_cfg.r,
        lora_alpha=method_cfg.alpha,
        lora_dropout=method_cfg.dropout,
        target_modules=targets,
        task_type=TASK_TYPES[head],
        **extra,
    )


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    return get_peft_model(model, lora_config(method_cfg, model, head))
