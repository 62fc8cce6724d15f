"""Prefix caching for the torch engine: the keys and values of prompt heads that requests share.

Chat requests to one model mostly start the same way: the chat template's system turn (SmolLM2's adds one
when the request has none), a fixed system prompt, a few-shot header. A :class:`PrefixStore` keeps the
keys and values of such heads, so a newcomer whose prompt starts with a stored head prefills only the rest
(:meth:`tunesmith.serve.decode.DecodeBatch.admit`). Keys and values depend only on the tokens and their
positions, and a head always sits at positions 0.., so reusing them gives the same cache as prefilling
again (up to float rounding between batch shapes).

Which heads: nothing is known about a prompt's structure, so a head is stored when a prompt shares at least
:data:`MIN_SHARED_TOKENS` leading tokens with one of the last :data:`RECENT_PROMPTS` prompts — the second
request with a system prompt stores it, the third reuses it. Heads are evicted least recently used first,
beyond the store's byte budget (``serve --prefix-cache-mb``). The llama.cpp engine has its own (per slot).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import torch

MIN_SHARED_TOKENS = 16
"""Shorter shared heads are not stored: prefilling 16 tokens costs about one decode step of the batch."""
RECENT_PROMPTS = 32
"""Prompts remembered (token ids only) to find heads that requests share."""

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per decoder layer: keys and values of one row, ``[1, kv heads, tokens, head dim]`` each."""


def shared_length(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def windowed(model: Any) -> bool:
    """Whether the model has sliding-window layers: they look back a number of cache *columns*, and the
    padding between a reused head and the rest of a prompt would take places in that window."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


class PrefixStore:
    """Cached prompt heads of one served model (one set of weights and adapter: keys and values differ).

    Args:
        max_bytes: keys and values kept at most; 0 keeps none (prefix caching off).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.heads: OrderedDict[tuple[int, ...], LayerKV] = OrderedDict()
        self.recent: deque[tuple[int, ...]] = deque(maxlen=RECENT_PROMPTS)
        self.bytes = 0
        self.reused_tokens = 0
        """Prompt tokens not prefilled because a stored head held them."""

    def match(self, prompt: list[int]) -> tuple[int, ...] | None:
        """The longest stored head ``prompt`` starts with and goes beyond (its last token needs logits)."""
        best: tuple[int, ...] | None = None
        for head in self.heads:
            longer = best is None or len(head) > len(best)
            if longer and len(head) < len(prompt) and tuple(prompt[: len(head)]) == head:
                best = head
        if best is not None:
            self.heads.move_to_end(best)
            self.reused_tokens += len(best)
        return best

    def worth_storing(self, prompt: list[int], reused: int) -> int:
        """How many leading tokens of ``prompt`` to store after its prefill (0: none), and remember it.

        The longest head it shares with a recent prompt, if that is long enough, longer than what it
        reused, and not the whole prompt (a head needs a token after it).
        """
        if self.max_bytes <= 0:
            return 0
        shared = max((shared_length(prompt, other) for other in self.recent), default=0)
        self.recent.append(tuple(prompt))
        shared = min(shared, len(prompt) - 1)
        return shared if shared >= MIN_SHARED_TOKENS and shared > reused else 0

    def put(self, head: tuple[int, ...], layers: LayerKV) -> None:
        """Keep ``layers`` for ``head``; the least recently used heads go while over the budget."""
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if head in self.heads or size > self.max_bytes:
            return
        self.heads[head] = layers
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self.heads.popitem(last=False)
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in evicted)
