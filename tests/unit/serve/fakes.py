"""A fake causal LM for the serving worker's scheduling tests: it always picks one token."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import torch


class FixedTokenModel(torch.nn.Module):
    """Every forward's logits pick ``token``; its cache is a real one-number-per-token cache.

    Args:
        token: the token id every step produces (never an end-of-turn: rows end by ``max_tokens``).
        gated: a prefill answers at once, each decode step waits for ``gate`` (the test moves generation).
        delay_s: each forward sleeps this long, so a row of N tokens lasts about N times that.
    """

    def __init__(self, token: int, gated: bool = False, delay_s: float = 0.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=512)
        self.token, self.gated, self.delay_s = token, gated, delay_s
        self.gate = threading.Event()
        self.rows_per_forward: list[int] = []

    def forward(self, input_ids: torch.Tensor, past_key_values: Any, **kwargs: Any) -> SimpleNamespace:
        if self.gated and past_key_values.get_seq_length() > 0:  # a decode step, not a prefill
            self.gate.wait(timeout=30)
        time.sleep(self.delay_s)
        rows, length = input_ids.shape
        self.rows_per_forward.append(rows)
        past_key_values.update(torch.zeros(rows, 1, length, 1), torch.zeros(rows, 1, length, 1), 0)
        logits = torch.full((rows, 1, self.token + 1), float("-inf"))
        logits[..., self.token] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)
