"""Pluggable losses. A loss takes ``(model, batch)`` and returns ``(sum_of_token_losses, n_target_tokens)``.

Returning a *sum* and a count (not a mean) lets the loop normalise by the number of target tokens in the whole
accumulated batch, so gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

LossFn = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy on positions whose label is not -100 (computed in fp32)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1, :]
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    loss_sum = F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")
    return loss_sum, mask.sum()


LOSSES: dict[str, LossFn] = {"causal_lm": causal_lm_loss}
