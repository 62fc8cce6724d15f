"""Pluggable losses. A loss takes ``(model, batch)`` and returns ``(sum_of_token_losses, n_target_tokens)``.

Returning a *sum* and a count (not a mean) lets the loop normalise by the number of target tokens in the whole
accumulated batch, so gradient accumulation gives the same update as one big batch. A classification head's
"target tokens" are its examples: one labelled position each (:func:`sequence_classification_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.infer.loss import LossFn, causal_lm_loss, full_logits_loss, model_inputs


def sequence_classification_loss(
    model: Any, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of a sequence-classification head (``model.head: classification``), summed over examples.

    Each row's ``labels`` hold its class id at its last token and -100 elsewhere
    (:func:`tunesmith.data.render.class_target_labels`), so the count is the number of examples. The head
    (``score``) runs on those positions only: the same logits the model's own forward pools (the rightmost
    non-pad token) for right-padded rows, and correct for packed rows too, which that forward would pool as
    one sequence. Through PEFT, ``score`` is the ``modules_to_save`` copy that trains. ``class_weights``
    (one per class, ``train.class_weights``) scale each example's term; the count stays the example count.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, base.base_model_prefix)
    mask = batch["labels"] != -100
    hidden = decoder(**model_inputs(batch)).last_hidden_state
    logits = base.score(hidden[mask]).float()
    weight = class_weights.to(logits.device) if class_weights is not None else None
    return F.cross_entropy(logits, batch["labels"][mask], weight=weight, reduction="sum"), mask.sum()


LOSSES: dict[str, LossFn] = {
    "causal_lm": causal_lm_loss,
    "causal_lm_full_logits": full_logits_loss,
    "sequence_classification": sequence_classification_loss,
}
