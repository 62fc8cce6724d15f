"""Gated MLPs that keep less for the backward pass, with the same numbers.

A Llama-style MLP computes ``down(silu(gate(x)) * up(x))``. Autograd keeps ``gate(x)`` (for silu's
gradient), ``silu(gate(x))`` and ``up(x)`` (for the product's), and ``down`` keeps the product: four
intermediate-size tensors per token. :class:`SiluMul` keeps ``gate(x)`` and ``up(x)`` only and recomputes the
silu in the backward pass (elementwise: cheap), so three: for the default model 1,536 fewer floats per token
and layer, 184 KB a token over its 30 layers (566 MB for a micro-batch of 8 x 384 tokens in fp32). The
forward runs the same ops, and the backward the same kernels on the same values as autograd's: losses and
gradients are bitwise those of the unfused model.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F

GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}
"""transformers classes whose forward is exactly ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""
SILU_ACTIVATIONS = {"SiLU", "SiLUActivation"}
"""torch's and transformers' (``ACT2FN["silu"]``): both ``F.silu``."""


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, saving its two inputs only."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)


def _fused_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def fuse_gated_mlps(model: Any) -> int:
    """Switch every SiLU-gated MLP of ``model`` (see :data:`GATED_MLPS`) to :class:`SiluMul`, in place;
    returns how many. Idempotent; the module's weights, names and state dict do not change."""
    count = 0
    for module in model.modules():
        act = type(getattr(module, "act_fn", None)).__name__
        if type(module).__name__ in GATED_MLPS and act in SILU_ACTIVATIONS:
            module.forward = MethodType(_fused_forward, module)
            count += 1
    return count


def is_fused(mlp: Any) -> bool:
    forward = getattr(mlp, "forward", None)
    return getattr(forward, "__func__", None) is _fused_forward
