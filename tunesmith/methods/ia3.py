"""IA3 via PEFT: learned scaling vectors on keys, values and the MLP input; the model is frozen.

The smallest PEFT method (a few thousand parameters on a 135M model); saved as a stock PEFT adapter.
"""

from __future__ import annotations

from typing import Any

from peft import IA3Config, get_peft_model


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    config = IA3Config(
        target_modules=method_cfg.target_modules,
        feedforward_modules=method_cfg.feedforward_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
