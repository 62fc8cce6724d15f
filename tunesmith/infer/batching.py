"""Rows to tensors for any forward pass: padding (right for training and scoring, left for generation),
evaluation batches sorted by length, and the tokenized-rows type every layer passes around."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TokenData:
    """Tokenized rows for the loop (the loop needs nothing else from the data pipeline).

    The loop asks three things: :meth:`lengths` (to group similar lengths), :meth:`collate` (a batch of
    chosen examples) and :meth:`plan_shape` (the memory plan's worst case). Subclasses carry examples that
    are more than one row (a preference pair) or that the loss completes itself (prompts for RL).
    """

    input_ids: list[list[int]]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def collate(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate([self.input_ids[i] for i in idx], [self.labels[i] for i in idx], pad_id)

    def plan_shape(self) -> tuple[int, int]:
        """(rows per example, longest row) that a micro-batch's forward pass can reach."""
        return 1, max(self.lengths(), default=1)


def _tensor(values: list[float] | list[bool], idx: list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([values[i] for i in idx], dtype=dtype)


@dataclass
class PairData(TokenData):
    """Preference pairs: ``input_ids``/``labels`` are the chosen rows, ``rejected_*`` the rejected ones, and
    ``ref_*`` the reference model's sequence log-probs (computed once before training; None: none needed).

    A batch holds both rows of each pair (keys ``rejected_*`` beside the chosen ones, row i of each the same
    pair, so splitting a batch by rows keeps pairs whole) and ``targets``: one loss unit per pair.
    """

    rejected_ids: list[list[int]] = field(default_factory=list)
    rejected_labels: list[list[int]] = field(default_factory=list)
    ref_chosen: list[float] | None = None
    ref_rejected: list[float] | None = None

    def lengths(self) -> list[int]:
        return [len(c) + len(r) for c, r in zip(self.input_ids, self.rejected_ids, strict=True)]

    def collate(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        batch = super().collate(idx, pad_id)
        rejected = collate(
            [self.rejected_ids[i] for i in idx], [self.rejected_labels[i] for i in idx], pad_id
        )
        batch.update({f"rejected_{k}": v for k, v in rejected.items()})
        batch["targets"] = torch.ones(len(idx))
        if self.ref_chosen is not None and self.ref_rejected is not None:
            batch["ref_chosen_logps"] = _tensor(self.ref_chosen, idx, torch.float32)
            batch["ref_rejected_logps"] = _tensor(self.ref_rejected, idx, torch.float32)
        return batch

    def plan_shape(self) -> tuple[int, int]:
        widths = [max(len(c), len(r)) for c, r in zip(self.input_ids, self.rejected_ids, strict=True)]
        return 2, max(widths, default=1)


@dataclass
class RetainData(TokenData):
    """Training rows and ``data.retain`` rows in one set: ``retain[i]`` marks row i as one whose answer is
    trained towards the base model's distribution, not its text; batches carry it as a bool ``retain``."""

    retain: list[bool] = field(default_factory=list)

    def collate(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        batch = super().collate(idx, pad_id)
        batch["retain"] = _tensor(self.retain, idx, torch.bool)
        return batch


@dataclass
class UnpairedData(TokenData):
    """Unpaired feedback (KTO): each row a completion that is ``desirable`` or not, with its reference
    log-prob ``ref`` (None: not computed yet). One loss unit per row (``targets``)."""

    desirable: list[bool] = field(default_factory=list)
    ref: list[float] | None = None

    def collate(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        batch = super().collate(idx, pad_id)
        batch["desirable"] = _tensor(self.desirable, idx, torch.bool)
        batch["targets"] = torch.ones(len(idx))
        if self.ref is not None:
            batch["ref_logps"] = _tensor(self.ref, idx, torch.float32)
        return batch


@dataclass
class PromptData(TokenData):
    """Prompts the loss completes itself (reinforcement learning): ``input_ids`` are left-padded for
    generation; ``index`` says which data row (the grader's ``item``) each batch row is; one loss unit per
    prompt. ``labels`` are unused (an empty list)."""

    completions_per_prompt: int = 1
    max_new_tokens: int = 0

    def collate(self, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate([self.input_ids[i] for i in idx], None, pad_id, pad_left=True)
        batch["index"] = torch.tensor(idx, dtype=torch.long)
        batch["targets"] = torch.ones(len(idx))
        return batch

    def plan_shape(self) -> tuple[int, int]:
        return self.completions_per_prompt, max(self.lengths(), default=1) + self.max_new_tokens


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """The loss units of a batch the loop normalises by: ``targets`` when the batch says (pairs, prompts),
    else its target tokens (labels other than -100, after the shift)."""
    if "targets" in batch:
        return int(batch["targets"].sum())
    return int((batch["labels"][:, 1:] != -100).sum())


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) input tokens of a batch, every row set included (a pair's rejected rows too)."""
    return sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))


def model_device(model: Any) -> torch.device:
    """The device of the model's (first) parameters: where its inputs must go."""
    return next(model.parameters()).device


def collate(
    input_ids: list[list[int]], labels: list[list[int]] | None, pad_id: int, pad_left: bool = False
) -> dict[str, torch.Tensor]:
    """Pad to the longest row. Left padding is for generation prompts; training pads right."""
    width = max(len(ids) for ids in input_ids)
    ids_t = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(input_ids), width), dtype=torch.long)
    lab_t = torch.full((len(input_ids), width), -100, dtype=torch.long)
    for row, ids in enumerate(input_ids):
        cols = slice(width - len(ids), width) if pad_left else slice(0, len(ids))
        ids_t[row, cols] = torch.tensor(ids, dtype=torch.long)
        attn[row, cols] = 1
        if labels is not None:
            lab_t[row, cols] = torch.tensor(labels[row], dtype=torch.long)
    batch = {"input_ids": ids_t, "attention_mask": attn}
    if labels is not None:
        batch["labels"] = lab_t
    return batch


def iter_eval_batches(
    input_ids: list[list[int]], labels: list[list[int]], batch_size: int, pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches in a fixed order, sorted by length so padding is small."""
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield collate([input_ids[i] for i in idx], [labels[i] for i in idx], pad_id)
