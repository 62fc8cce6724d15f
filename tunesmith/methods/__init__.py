"""Fine-tuning methods, registered by name. Each module exposes ``prepare(model, method_cfg) -> model``.

``prepare`` freezes/unfreezes or wraps the model so exactly the method's parameters train; the loop never
needs to know which method ran. Adding a method: a config class in ``tunesmith.config`` and one module here.

Two optional registrations for methods that need more than ``prepare``:
  LOAD_OPTIONS  extra ``from_pretrained`` arguments for the base (qlora: 4-bit quantization)
  RUNNERS       methods that do not use the training loop at all (feature_extraction): a module with
                ``train(cfg)``, ``evaluate(run_dir, data)`` and ``predict(run_dir, data, out, fmt)``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.methods import adapter, dora, freeze, full, ia3, lora, prefix_tuning, prompt_tuning, qlora

PrepareFn = Callable[[Any, Any], Any]

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

LOAD_OPTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {"qlora": qlora.load_options}

RUNNERS: dict[str, str] = {"feature_extraction": "tunesmith.methods.feature_extraction"}
"""Method name -> module path, imported on use (scikit-learn and the feature cache load only when needed)."""


def prepare_model(model: Any, method_cfg: Any) -> Any:
    """Apply the configured method to ``model`` and return the model to train."""
    return METHODS[method_cfg.name](model, method_cfg)


def load_options(method_cfg: Any) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments the method needs for its base model (usually none)."""
    option_fn = LOAD_OPTIONS.get(method_cfg.name)
    return option_fn(method_cfg) if option_fn is not None else {}


def runner(method_name: str) -> Any | None:
    """The module that trains/evaluates/predicts for a method outside the loop, or None (loop methods)."""
    import importlib

    path = RUNNERS.get(method_name)
    return importlib.import_module(path) if path is not None else None


def runner_for(cfg: Any) -> Any | None:
    """Like :func:`runner`, for a run config: a classification head (``model.head: classification``) has
    its own evaluate/predict in :mod:`tunesmith.methods.seq_cls_run`, whatever the method."""
    if cfg.model.head == "classification":
        import importlib

        return importlib.import_module("tunesmith.methods.seq_cls_run")
    return runner(cfg.method.name)


def optimizer_for(method_cfg: Any) -> Callable[[Any, Any], Any] | None:
    """The method's own optimizer factory for ``train_loop(make_optimizer=...)``, or None for the loop's
    plain AdamW: LoRA+ parameter groups (B matrices at ``loraplus_lr_ratio`` x ``train.lr``, via PEFT) when
    the method sets that ratio."""
    ratio = getattr(method_cfg, "loraplus_lr_ratio", None)
    if ratio is None:
        return None

    def loraplus(model: Any, train_cfg: Any) -> Any:
        import torch
        from peft.optimizers import create_loraplus_optimizer

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
