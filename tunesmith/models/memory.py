"""Peak-memory planning before training: weights, gradients, optimizer states, activations.

    plan = plan_memory(model, tokens=8 * 512, target_tokens=8 * 200, precision="no")
    print(plan.line())   # "memory plan: ~1234 MB peak = weights 540 + adamw 20 + max(activations 664 + ..."
    micro, accum = fit_micro_batch(16, 1, lambda b: plan_memory(model, b * 512, b * 200).total_mb, 4000)

The activation term is a per-token, per-layer count of the tensors autograd saves for a Llama-shaped decoder
layer, calibrated with ``saved_activation_bytes`` (an exact count through autograd's saved-tensor hooks) on
several shapes (hidden, intermediate, kv width, LoRA rank); the tests hold the estimate to that measurement.
It is an estimate: allocator caching, fragmentation and the framework itself come on top (see ``OVERHEAD``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.models.fused import is_fused

MB = 1024 * 1024
OVERHEAD = 1.10
"""Multiplier for allocator slack and transient buffers (activation gradients of one layer at a time)."""
CHUNK_POSITIONS = 2048
"""Target positions the losses project to the vocabulary at once (tunesmith/infer/loss.py): bounds the logits
tensor to 2048 x vocab floats (~400 MB for a 49k vocab) however large the batch."""
TRAIN_CHUNK_POSITIONS = 512
"""The same while training through ``FrozenHeadCrossEntropy``: two chunks' floats live at once, at the step's
memory peak (2 x 512 x 49k x 4 B = 192 MB), counted by :func:`loss_chunk_bytes`."""


@dataclass
class MemoryPlan:
    weights_mb: float
    grads_mb: float
    optimizer_mb: float
    activations_mb: float
    loss_mb: float
    """The loss's logits in flight at the end of the forward, beside every saved activation."""
    grads_in_forward: bool
    """Whether gradients exist during a forward pass: only when micro-batches accumulate. Otherwise the loop
    frees them after each optimizer step and the backward pass builds them as it frees the activations, so
    the peak is the larger of the two (the forward's end, or the optimizer step), not their sum: for full
    fine-tuning of the default model, 4 x 256 tokens, the sum over-predicted the peak by 24 %."""

    @property
    def total_mb(self) -> float:
        forward = self.activations_mb + self.loss_mb
        working = forward + self.grads_mb if self.grads_in_forward else max(forward, self.grads_mb)
        return (self.weights_mb + self.optimizer_mb + working) * OVERHEAD

    def line(self) -> str:
        forward = f"activations {self.activations_mb:.0f} + loss chunks {self.loss_mb:.0f}"
        grads = f"grads {self.grads_mb:.0f}"
        working = f"{grads} + {forward}" if self.grads_in_forward else f"max({forward}, {grads})"
        return (
            f"memory plan: ~{self.total_mb:.0f} MB peak = weights {self.weights_mb:.0f} + adamw "
            f"{self.optimizer_mb:.0f} + {working} (+{(OVERHEAD - 1) * 100:.0f}% slack)"
        )


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _shape(model: Any) -> tuple[Any, int, int, int, int, int, int]:
    """(config, hidden, intermediate, kv width, heads, layers, vocab) of a Llama-shaped model."""
    config = model.config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = _head_dim(config)
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    return (
        config,
        hidden,
        intermediate,
        kv_heads * head_dim,
        heads,
        config.num_hidden_layers,
        config.vocab_size,
    )


def _lora_floats(model: Any) -> int:
    """Per token and layer, LoRA saves each adapter's rank-r intermediate: r x adapted modules per layer."""
    total = 0
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict):
            total += sum(layer.out_features for layer in lora_a.values())
    return total // max(1, _shape(model)[5])


def _attention_floats(model: Any, masked_width: int) -> int:
    """Per token and layer, what attention saves besides its input: keys, values, the log-sum-exp per head.

    Rows with padding (``masked_width`` > 0: the rows' width) take transformers' masked SDPA path: the keys
    and values are repeated to every query head before the kernel (no grouped-query shortcut) and each layer
    keeps its own copy of the ``rows x width x width`` mask, ``width`` values a token. Measured on the
    default model, 8 x 384 tokens with padding: 405 + 135 MB more than without (torch profiler, 2026-12-07).
    """
    config, _, _, kv, heads, _, _ = _shape(model)
    if masked_width <= 0:
        return 2 * kv + heads
    return 2 * heads * _head_dim(config) + heads + masked_width


def _activation_parts(
    model: Any, target_fraction: float, checkpointing: bool, recompute: bool, masked_width: int
) -> tuple[float, float]:
    """Saved values per token, split into (those that stay fp32 under bf16 autocast, the rest)."""
    _, hidden, inter, _, _, layers, vocab = _shape(model)
    base_trains = any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    gated = 3 if any(is_fused(m) for m in model.modules()) else 4  # models/fused.py: the silu is recomputed
    wide = (8 if base_trains else 6) * hidden  # the residual stream, the norms, the linears' inputs
    narrow = gated * inter + _attention_floats(model, masked_width) + 2 + _lora_floats(model)
    if checkpointing:
        wide_kept, narrow_kept = hidden * layers + (wide if recompute else 0), narrow if recompute else 0
    else:
        wide_kept, narrow_kept = wide * layers, narrow * layers
    head = model.get_output_embeddings()
    per_target = vocab if head is None or head.weight.requires_grad else hidden  # fp32 either way
    return wide_kept + (3 if base_trains else 1) * hidden + per_target * target_fraction, narrow_kept


def activation_floats_per_token(
    model: Any,
    target_fraction: float,
    checkpointing: bool = False,
    recompute: bool = True,
    masked_width: int = 0,
) -> float:
    """Saved activation values per token of a micro-batch (calibrated; see the module docstring).

    Per layer: ~6 x hidden (8 when base weights train: norm/residual copies kept for their grads) + 4 x
    intermediate (gate, up, act, product; 3 once :func:`~tunesmith.models.fused.fuse_gated_mlps` ran) + 2 x
    kv width + heads (more for padded rows: :func:`_attention_floats`); plus the rank-r LoRA intermediates.
    The loss head keeps one vocabulary row of logits per *target* token when it trains, a hidden-size
    gradient when it does not (``FrozenHeadCrossEntropy``); the final norm ~1-3 x hidden. Checkpointing
    keeps only each layer's input (hidden), plus (``recompute``) one layer's full set while the backward
    pass recomputes it.
    """
    return sum(_activation_parts(model, target_fraction, checkpointing, recompute, masked_width))


def activation_bytes_per_token(
    model: Any,
    target_fraction: float,
    precision: str,
    checkpointing: bool = False,
    recompute: bool = True,
    masked_width: int = 0,
) -> float:
    """Saved activation bytes per token: 4 a value in fp32. Under bf16 autocast the hidden-size values stay
    fp32-sized (the residual stream and the norms are fp32, the linears keep bf16 copies of their inputs
    besides: on the default model, LoRA, 2 fp32 + 7.3 bf16 such tensors a layer against 6 fp32 without
    autocast), and so do the loss's rows; the rest is halved. Measured there: 0.81x the fp32 bytes, not 0.5x.
    """
    wide, narrow = _activation_parts(model, target_fraction, checkpointing, recompute, masked_width)
    if precision != "bf16":
        return 4 * (wide + narrow)
    _, _, inter, _, _, layers, _ = _shape(model)
    full_layers = (1 if recompute else 0) if checkpointing else layers
    # and ~0.6-0.75 more intermediate-size tensor a layer in bf16 (measured: default model and tiny Llama)
    return 4 * wide + 2 * (narrow + 0.75 * inter * full_layers)


def loss_chunk_bytes(model: Any, target_tokens: int) -> float:
    """Bytes of logits the next-token loss holds besides the saved activations, at the step's peak (the end
    of the forward): two fp32 ``TRAIN_CHUNK_POSITIONS x vocab`` tensors when the head does not train (its
    logits and log-probabilities; under bf16 autocast the bf16 logits and their fp32 copy are smaller than
    that), one ``CHUNK_POSITIONS x vocab`` when it does (the chunk's logits, beside the log-probabilities
    kept for every target, which the activations count; under bf16 autocast the bf16 logits and their fp32
    copy live together only before those log-probabilities exist). Without it the plan of the default
    model's LoRA step (8 x 384 tokens) missed 192 MB of its 3.2 GB of live tensors (torch profiler).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or target_tokens <= 0:
        return 0.0
    vocab = head.weight.shape[0]
    if head.weight.requires_grad:
        return 4.0 * min(CHUNK_POSITIONS, target_tokens) * vocab
    return 4.0 * 2 * min(TRAIN_CHUNK_POSITIONS, target_tokens) * vocab


def plan_memory(
    model: Any,
    tokens: int,
    target_tokens: int,
    precision: str = "no",
    checkpointing: bool = False,
    width: int = 0,
    grad_accum: int = 1,
) -> MemoryPlan:
    """Estimate peak training memory for micro-batches of ``tokens`` (padded) with ``target_tokens`` labelled.

    Args:
        model: the prepared model (after the method is applied: trainable parameters are what they will be).
        tokens: positions per micro-batch including padding (rows x width).
        target_tokens: positions inside the loss; the head keeps a vocabulary row of logits for each.
        precision: accelerate's mixed-precision name; ``bf16`` halves most activation bytes.
        checkpointing: whether gradient checkpointing is on.
        width: the rows' width when some rows may be padded (the attention mask's path, the worst case);
            0 for rows of one length.
        grad_accum: micro-batches per optimizer step (above 1, gradients live through later forwards).
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # A head that trains keeps every chunk's logits for the backward pass: chunking does not cap them then.
    fraction = target_tokens / max(tokens, 1)
    per_token = activation_bytes_per_token(model, fraction, precision, checkpointing, masked_width=width)
    activations = per_token * tokens
    loss = loss_chunk_bytes(model, target_tokens)
    return MemoryPlan(
        weights / MB, trainable * 4 / MB, trainable * 8 / MB, activations / MB, loss / MB, grad_accum > 1
    )


def fit_micro_batch(
    batch_size: int, grad_accum: int, estimate_mb: Callable[[int], float], budget_mb: float
) -> tuple[int, int]:
    """The largest micro-batch whose estimate fits ``budget_mb``, keeping ``batch_size x grad_accum`` fixed.

    Candidates are the divisors of the global batch no larger than ``batch_size``, so the global batch stays
    exact. Returns (micro_batch, grad_accum); (1, global) when nothing fits (the OOM retry then splits rows).
    """
    global_batch = batch_size * grad_accum
    for micro in range(batch_size, 0, -1):
        if global_batch % micro == 0 and estimate_mb(micro) <= budget_mb:
            return micro, global_batch // micro
    return 1, global_batch


def saved_activation_bytes(model: Any, loss_fn: Callable[[Any, dict], Any], batch: dict) -> int:
    """Bytes autograd saves for the backward pass of ``loss_fn(model, batch)``, parameters excluded.

    Counted through ``torch.autograd.graph.saved_tensors_hooks``, one entry per storage (views share one),
    so it is the activation memory exactly, without allocator noise; used to calibrate and test the planner.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(model, batch)
    return sum(seen.values())
