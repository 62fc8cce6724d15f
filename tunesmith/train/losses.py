"""Pluggable losses. A loss takes ``(model, batch)`` and returns ``(sum_of_token_losses, n_target_tokens)``.

Returning a *sum* and a count (not a mean) lets the loop normalise by the number of target tokens in the whole
accumulated batch, so gradient accumulation gives the same update as one big batch. A classification head's
"target tokens" are its examples: one labelled position each (:func:`sequence_classification_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.infer.loss import (
    CHUNK_POSITIONS,
    LossFn,
    causal_lm_loss,
    causal_lm_parts,
    full_logits_loss,
    model_inputs,
)
from tunesmith.train.preference import StepStats


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


def kl_to_base(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(base || tuned) of the next-token distributions at a batch's target positions, and how many.

    The base is ``model`` with its PEFT adapter switched off: one no-grad forward, no second model. Both
    distributions are projected to the vocabulary only at target positions, in chunks, as
    :func:`causal_lm_loss` does; the base's log-probs are held for all target positions at once (positions x
    vocabulary floats: retain rows are a small share of a batch).
    """
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    parts = causal_lm_parts(model)
    if parts is None:
        raise ValueError("data.retain needs a causal LM with a separate output head")
    decoder, head = parts

    def log_probs() -> list[torch.Tensor]:
        picked = decoder(**model_inputs(batch)).last_hidden_state[:, :-1][mask]
        return [
            F.log_softmax(head(picked[i : i + CHUNK_POSITIONS]).float(), dim=-1)
            for i in range(0, picked.shape[0], CHUNK_POSITIONS)
        ]

    with torch.no_grad(), model.disable_adapter():  # the head inside too, in case the adapter wraps it
        base = log_probs()
    tuned = log_probs()
    kl = sum(
        (F.kl_div(t, b, log_target=True, reduction="sum") for t, b in zip(tuned, base, strict=True)),
        start=targets.new_zeros((), dtype=torch.float32),
    )
    return kl, mask.sum()


class RetainLoss(StepStats):
    """``data.retain``: next-token cross-entropy on training rows, ``weight`` x KL to the base on retain rows.

    Learning without forgetting with soft targets: a retain row's answer positions ask the tuned model for the
    base's whole next-token distribution there, not for the row's text, so general prompts keep the answers
    the base gave (the demo's seed 0 kept 118 of 148 general answers this way against 101 when the same rows
    were plain training rows, at a higher store accuracy; see the README for seed 1). A retain token is one
    loss unit, as a training token is. Batches without a ``retain`` key (validation) are plain cross-entropy.
    Logs ``retain_kl``: the mean KL per retain token of the step.
    """

    def __init__(self, weight: float, inner: LossFn = causal_lm_loss) -> None:
        super().__init__()
        self.weight, self.inner = weight, inner

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        flags = batch.get("retain")
        rows = {k: v for k, v in batch.items() if k != "retain"}
        if flags is None or not bool(flags.any()):
            return self.inner(model, rows)
        total = rows["labels"].new_zeros((), dtype=torch.float32)
        units = rows["labels"].new_zeros(())
        if not bool(flags.all()):
            total, units = self.inner(model, {k: v[~flags] for k, v in rows.items()})
        kl, n = kl_to_base(model, {k: v[flags] for k, v in rows.items()})
        if int(n):
            self.add({"retain_kl": kl.detach().expand(int(n)) / int(n)})
        return total + self.weight * kl, units + n


LOSSES: dict[str, LossFn] = {
    "causal_lm": causal_lm_loss,
    "causal_lm_full_logits": full_logits_loss,
    "sequence_classification": sequence_classification_loss,
}
