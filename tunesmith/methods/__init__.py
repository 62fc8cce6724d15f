"""Fine-tuning methods, registered by name: one small module per method that prepares, saves, loads a model.

``prepare(model, method_cfg, head)`` freezes/unfreezes or wraps the model so exactly the method's parameters
train (``head``: ``lm`` or ``classification``, e.g. the PEFT task type); the loop never needs to know which
method ran. Adding a method: a config class in ``tunesmith.config``, one module here, one line in
:data:`~tunesmith.methods.registry.METHODS`. How a run *trains* (the loop, feature extraction, a head) is a
run kind in ``tunesmith.pipelines``, not a method.

Importing this package registers with :mod:`tunesmith.runs` how methods' results load back: the classification
head's loader, qlora's 4-bit base and the bottleneck adapter format.
"""

from __future__ import annotations

from tunesmith import runs
from tunesmith.methods import adapter, qlora, seq_cls
from tunesmith.methods.registry import METHODS, count_parameters, optimizer_for, prepare_model
from tunesmith.runs import load_options, load_trained

runs.register_head("classification", seq_cls.head_loader)
runs.register_load_options("qlora", qlora.load_options)
runs.register_after_load("qlora", qlora.keep_differentiable_kernels)
runs.register_adapter_format(adapter.FORMAT)

__all__ = ["METHODS", "count_parameters", "load_options", "load_trained", "optimizer_for", "prepare_model"]
