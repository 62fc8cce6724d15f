"""A plain-PyTorch reference for the loop's exact-loss tests, computed in the test on the machine it runs on.

Why: constants recorded on one CPU fail on another (an AVX512 Xeon sums in another order than an AVX2
EPYC, and ``precision: auto`` picks bf16 there). The reference below shares nothing with the loop but the
batch order (``length_grouped_batches``, tested on its own): its loss is the model's own full-logits forward
and ``F.cross_entropy``, its schedule is written out here from the formulas, its optimizer is stock AdamW.
It runs in fp32, so tests that compare against it pin ``precision="fp32"`` for the loop as well.

    losses = reference_losses(model, data, cfg, seed=0, pad_id=PAD, steps=3)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.config import TrainConfig
from tunesmith.train.batching import length_grouped_batches

EXACT = 1e-6
"""fp32 loop vs fp32 reference, same machine: only summation order differs (the loop projects target
positions only, in chunks; the reference projects every position)."""


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps: linear warmup, then the schedule."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return step / max(1, warmup)
    if cfg.scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine, half a period


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def lm_loss_sum(model: Any, ids: list[list[int]], labels: list[list[int]], pad_id: int) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions, from the model's full logits."""
    input_ids = _pad(ids, pad_id)
    mask = _pad([[1] * len(r) for r in ids], 0)
    targets = _pad(labels, -100)
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, -input_ids.shape[1] :]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def reference_losses(
    model: Any, data: Any, cfg: TrainConfig, seed: int, pad_id: int, steps: int, loss_sum: Any = lm_loss_sum
) -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps; the loss of each step (mean per target).

    ``data`` has ``input_ids`` and ``labels`` (lists of rows). ``loss_sum(model, ids, labels, pad_id)``
    returns the summed loss of a micro-batch; the step's loss divides by the step's target count, as the
    loop promises (so accumulation equals one big batch).
    """
    total_steps = cfg.max_steps if cfg.max_steps is not None else steps
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = [len(r) for r in data.input_ids]
    micro_batches: list[list[int]] = []
    epoch = 0
    while len(micro_batches) < steps * cfg.grad_accum:
        micro_batches += length_grouped_batches(lengths, cfg.batch_size, seed, epoch, cfg.group_by_length)
        epoch += 1
    model.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg, total_steps)
        chunk = micro_batches[step * cfg.grad_accum : (step + 1) * cfg.grad_accum]
        n_target = sum(sum(t != -100 for t in data.labels[i][1:]) for idx in chunk for i in idx)
        step_loss = 0.0
        for idx in chunk:
            ids, labels = [data.input_ids[i] for i in idx], [data.labels[i] for i in idx]
            loss = loss_sum(model, ids, labels, pad_id) / n_target
            loss.backward()
            step_loss += float(loss.detach())
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
    return losses
