"""Token losses: the next-token cross-entropy (fast chunked path and the full-logits reference) and its mean
over a data set. Training minimises them (tunesmith/train/losses.py registers them as objectives); evaluation
and probes report them, so they live below both.

A loss takes ``(model, batch)`` and returns ``(sum_of_token_losses, n_target_tokens)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule

from tunesmith.faults import fault_point
from tunesmith.infer.batching import TokenData, iter_eval_batches
from tunesmith.models.memory import CHUNK_POSITIONS, TRAIN_CHUNK_POSITIONS

LossFn = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def causal_lm_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output head) of a causal LM, seen through a PEFT wrapper; None if the model hides them.

    None too for PEFT prompt learning (prompt/prefix tuning): its virtual tokens enter in PEFT's own forward,
    which calling the decoder directly would bypass (the loss would then never reach them).
    """
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None
    return decoder, head


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward gets: packed rows (``position_ids`` present) go without an attention mask, so
    transformers builds the block-diagonal mask from the restarting positions; padded rows get the mask.

    ``use_cache=False`` always: a loss never needs the KV cache, and with one (the config default),
    transformers 5.23 skips packed-sequence detection and lets packed examples attend to each other.
    """
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy on positions whose label is not -100 (computed in fp32).

    The output head runs only on target positions, in chunks: answers are often a third of the tokens, and
    the head (vocab x hidden) is ~20% of a small model's FLOPs, so this saves that share on every prompt
    token and never materialises batch x length x vocab logits.
    """
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    parts = causal_lm_parts(model)
    if parts is None:  # unusual architectures: plain full-logits path
        return full_logits_loss(model, batch)
    decoder, head = parts
    hidden = decoder(**model_inputs(batch)).last_hidden_state
    picked, wanted = hidden[:, :-1][mask], targets[mask]
    if picked.requires_grad and _frozen_linear(model, head):
        return FrozenHeadCrossEntropy.apply(picked, wanted, head.weight), mask.sum()
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, picked.shape[0], CHUNK_POSITIONS):
        logits = head(picked[start : start + CHUNK_POSITIONS]).float()
        loss_sum = loss_sum + F.cross_entropy(
            logits, wanted[start : start + CHUNK_POSITIONS], reduction="sum"
        )
    return loss_sum, mask.sum()


def _frozen_linear(model: Any, head: Any) -> bool:
    """A plain linear head that does not train, outside FSDP: a sharded model gathers and frees the head's
    weight around the module's own calls and its gradient hooks, which :class:`FrozenHeadCrossEntropy`
    (reading the weight directly, giving it no gradient) would bypass."""
    return (
        isinstance(head, torch.nn.Linear)
        and not head.weight.requires_grad
        and (head.bias is None or not head.bias.requires_grad)
        and not isinstance(head, FSDPModule)
        and not isinstance(model, FSDPModule)
    )


class FrozenHeadCrossEntropy(torch.autograd.Function):
    """Summed next-token cross-entropy of ``hidden @ weight.T`` (a head that does not train: LoRA, freeze),
    with its gradient w.r.t. ``hidden`` computed during the forward, chunk by chunk.

    Autograd would keep a vocabulary row of log-probabilities per target position for the backward pass
    (49,152 floats for the default model; 1,536 targets = 300 MB) and then build two more such tensors at
    its start, while every layer's activations are still held: the training step's memory peak. Here the
    backward keeps hidden-size floats per target (576), and the forward holds two chunks of
    :data:`TRAIN_CHUNK_POSITIONS` rows at a time. Same FLOPs (the head's backward matmul moves into the
    forward); the loss is the same kernel's sum as ``F.cross_entropy``.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], TRAIN_CHUNK_POSITIONS):
            rows = slice(start, start + TRAIN_CHUNK_POSITIONS)
            log_probs = F.log_softmax(F.linear(hidden[rows], weight).float(), dim=-1)
            loss = loss + F.nll_loss(log_probs, targets[rows], reduction="sum")
            d_logits = log_probs.exp_()  # softmax - one-hot: d(loss)/d(logits), in place
            d_logits[torch.arange(d_logits.shape[0], device=d_logits.device), targets[rows]] -= 1.0
            grad[rows] = (d_logits.to(weight.dtype) @ weight).to(grad.dtype)
            # Dropped before the next chunk's logits exist: else three chunks live at once, not two (the
            # default model: 288 MB instead of 192 at the step's peak, measured with the torch profiler).
            del log_probs, d_logits
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None


def full_logits_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation through the model's own forward (all logits); used to test the fast path."""
    out = model(**model_inputs(batch))
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logits = out.logits[:, -batch["input_ids"].shape[1] :]  # prompt tuning prepends virtual-token logits
    return F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="sum"), mask.sum()


@torch.no_grad()
def evaluate_loss(
    model: Any, data: TokenData, batch_size: int, pad_id: int, device: Any, loss_fn: LossFn = causal_lm_loss
) -> float:
    """Mean of ``loss_fn`` (next-token loss by default) over the labelled positions of ``data``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in iter_eval_batches(data.input_ids, data.labels, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum, n = loss_fn(model, batch)
        total += float(loss_sum)
        count += int(n)
        fault_point("eval.batch")  # test-only: the crash tests kill a run here, mid-evaluation
    model.train(was_training)
    return total / max(count, 1)
