"""Rows to tensors for any forward pass: padding (right for training and scoring, left for generation),
evaluation batches sorted by length, and the tokenized-rows type every layer passes around."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TokenData:
    """Tokenized rows for the loop (the loop needs nothing else from the data pipeline)."""

    input_ids: list[list[int]]
    labels: list[list[int]]


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
