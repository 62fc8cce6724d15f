"""Sequence log-probabilities: the sum of ``log p(token)`` over a row's labelled positions.

Preference objectives compare these sums (chosen vs rejected, policy vs reference); reward-model baselines and
the reference cache compute them without gradients. The output head runs on labelled positions only, as in
:func:`tunesmith.infer.loss.causal_lm_loss`, so no batch x length x vocab tensor is built.

    logps, counts = sequence_logps(model, batch)        # one value per row
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.infer.batching import collate, model_device
from tunesmith.infer.loss import CHUNK_POSITIONS, causal_lm_parts, model_inputs


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in fp32 (bf16 log-softmax loses the small differences DPO compares)."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def token_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each next token, target mask), both ``[rows, length - 1]``; 0 where ``labels`` is -100.

    Differentiable; ``model`` may be PEFT-wrapped. Only target positions go through the output head.
    """
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    parts = causal_lm_parts(model)
    if parts is None:  # prompt learning and unusual architectures: the model's own forward, all logits
        logits = model(**model_inputs(batch)).logits[:, -batch["input_ids"].shape[1] :]
        picked = _token_logps(logits[:, :-1][mask], targets[mask])
    else:
        decoder, head = parts
        hidden = decoder(**model_inputs(batch)).last_hidden_state[:, :-1][mask]
        wanted = targets[mask]
        picked = torch.cat(
            [
                _token_logps(head(hidden[s : s + CHUNK_POSITIONS]), wanted[s : s + CHUNK_POSITIONS])
                for s in range(0, hidden.shape[0], CHUNK_POSITIONS)
            ]
            or [hidden.new_zeros(0, dtype=torch.float32)]
        )
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    return out.masked_scatter(mask, picked), mask


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of target-token log-probs, number of target tokens) per row of ``batch``; differentiable."""
    logps, mask = token_logps(model, batch)
    return logps.sum(dim=1), mask.sum(dim=1)


@torch.no_grad()
def logps_of_rows(
    model: Any, input_ids: list[list[int]], labels: list[list[int]], pad_id: int, batch_size: int = 8
) -> tuple[list[float], list[int]]:
    """:func:`sequence_logps` of every row, in input order, without gradients (eval mode, no dropout).

    Rows are batched in length order so little padding is computed.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    logps: list[float] = [0.0] * len(input_ids)
    counts: list[int] = [0] * len(input_ids)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([input_ids[i] for i in idx], [labels[i] for i in idx], pad_id)
        sums, n = sequence_logps(model, {k: v.to(device) for k, v in batch.items()})
        for row, i in enumerate(idx):
            logps[i], counts[i] = float(sums[row]), int(n[row])
    model.train(was_training)
    return logps, counts
