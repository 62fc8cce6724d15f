"""Continuous batching: generating rows join a running batch at token boundaries and leave when they end.

Before, one batch was one ``model.generate`` call: a request that arrived one token after a batch started
waited for the whole batch to end (up to its longest ``max_tokens``), and rows that had ended kept riding
along until then. Here the worker keeps one :class:`DecodeBatch` per model and, between two decode steps,
prefills newcomers and splices them in, and drops rows that have ended. What it costs: every join is a
prefill of the newcomers (the running rows wait for it, one forward) and a copy of the KV cache to align the
two parts by left padding; every leave is a copy of the cache without that row. Both are small next to the
tokens a row would otherwise wait for.

Rows are aligned on the right: each row's tokens end at the newest cache column, shorter histories are
padded on the left and masked out. Each row keeps its own position ids (tokens it has really seen), so
padding never shifts RoPE. Columns that every row masks out are cut from the left as rows leave, so the
cache does not keep the length of rows long gone.

Prefix caching (:mod:`tunesmith.serve.prefix`): newcomers whose prompts start with a stored head are
prefilled as their own group, after the head's keys and values; their rows are then [head][padding][rest],
a hole the mask covers and the position ids skip.

The cache is always a plain :class:`~transformers.DynamicCache` (every layer a full-length layer), also for
models with sliding-window layers: their attention masks still apply the window, and only plain layers can
be spliced and cut. It costs memory beyond the window, which serving's short contexts do not reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from tunesmith.infer.batching import collate
from tunesmith.infer.generate import model_device
from tunesmith.serve.models import ServedModel
from tunesmith.serve.prefix import PrefixStore, windowed
from tunesmith.serve.work import Finished, Job, Row, fail_rows


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a turn: the tokenizer's end-of-sequence and the model's configured ones."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """The rows of one served model that decode together, one token per :meth:`step`.

    Args:
        served: the model every row belongs to (one set of weights, one adapter).
        on_done: called with ``(model_id, finished)`` as each row ends, before its client hears of it.
    """

    def __init__(self, served: ServedModel, on_done: Callable[[str, Finished], None]) -> None:
        self.served, self.on_done = served, on_done
        self.rows: list[Row] = []
        self.cache = DynamicCache()
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        """[rows, cache length]: 1 where a row has a real token, 0 for its left padding."""
        self.positions = torch.zeros(0, dtype=torch.long)
        """Each row's next position id: the number of real tokens it has seen."""
        self.last = torch.zeros(0, dtype=torch.long)
        """Each row's newest token, the input of the next step."""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def key(self) -> tuple[str, bool]:
        return self.served.id, False

    @torch.inference_mode()
    def admit(self, model: Any, jobs: list[Job]) -> int:
        """Prefill ``jobs``, draw their first tokens and splice them in: one left-padded forward for the
        jobs that start with the same stored head (:mod:`tunesmith.serve.prefix`), or with none.

        Returns:
            The rows in the batch right after the join (rows that end on their first token included).
        """
        ends = eos_ids(model, self.served.tokenizer)
        store = None if windowed(model) else self.served.prefixes
        heads = [store.match(job.prompt_ids) if store is not None else None for job in jobs]
        rows: list[Row] = []
        for head in dict.fromkeys(heads):  # distinct heads, in order of arrival
            group = [job for job, h in zip(jobs, heads, strict=True) if h == head]
            group_rows = [Row(job, ends, self.on_done) for job in group]
            cache, mask, logits = self._prefill(model, [job.prompt_ids for job in group], head or ())
            first = torch.tensor([row.pick(logits[i]) for i, row in enumerate(group_rows)])
            if store is not None:
                self._store_heads(store, group, cache, mask, len(head or ()))
            self._splice(group_rows, cache, mask, mask.sum(-1), first)
            for row, token in zip(group_rows, first.tolist(), strict=True):
                row.push(token)
            rows += group_rows
        joined = len(self.rows)
        self._drop_ended()
        return joined

    def _prefill(
        self, model: Any, prompts: list[list[int]], head: tuple[int, ...]
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward over ``prompts`` after their shared stored ``head`` (empty: none).

        Returns:
            The cache (the head's columns, then each prompt's rest padded on the left), its mask, and each
            row's last-position logits.
        """
        tokenizer = self.served.tokenizer
        batch = collate([ids[len(head) :] for ids in prompts], None, tokenizer.pad_token_id, pad_left=True)
        mask = batch["attention_mask"].long()
        cache = DynamicCache()
        if head:
            assert self.served.prefixes is not None
            for index, (keys, values) in enumerate(self.served.prefixes.heads[head]):
                rows = len(prompts)
                cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
            mask = torch.cat([mask.new_ones(len(prompts), len(head)), mask], dim=1)
        device = model_device(model)
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask.to(device),
            # Position ids count real tokens only: the padding between a head and the rest shifts nothing.
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, len(head) :].to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits: the full vocabulary row per token is costly
        )
        return cache, mask, out.logits[:, -1]

    @staticmethod
    def _store_heads(
        store: PrefixStore, jobs: list[Job], cache: DynamicCache, mask: torch.Tensor, reused: int
    ) -> None:
        """Copy the keys and values of the heads worth storing out of a prefill's cache."""
        for i, job in enumerate(jobs):
            length = store.worth_storing(job.prompt_ids, reused)
            if not length:
                continue
            columns = mask[i].nonzero().squeeze(-1)[:length]  # the row's real tokens, across any padding
            layers = [
                (layer.keys[i : i + 1, :, columns.to(layer.keys.device)], layer.values[i : i + 1, :, columns])
                for layer in cache.layers
            ]
            store.put(tuple(job.prompt_ids[:length]), layers)

    @torch.inference_mode()
    def step(self, model: Any) -> None:
        """One decode forward for every row: each row draws, streams and maybe ends with its next token."""
        if not self.rows:
            return
        device = model_device(model)
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        out = model(
            input_ids=self.last[:, None].to(device),
            attention_mask=mask.to(device),
            position_ids=self.positions[:, None].to(device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.mask, self.positions = mask, self.positions + 1
        tokens = [row.pick(out.logits[i, -1]) for i, row in enumerate(self.rows)]
        self.last = torch.tensor(tokens)
        for row, token in zip(self.rows, tokens, strict=True):
            row.push(token)
        self._drop_ended()

    def fail(self, message: str) -> None:
        """End every row still running with ``Failed``: the batch is unusable (an error, a shutdown)."""
        fail_rows(self.rows, message)
        self.rows = []
        self.cache = DynamicCache()

    def _splice(
        self,
        rows: list[Row],
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        last: torch.Tensor,
    ) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.positions, self.last = rows, cache, mask, positions, last
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for ours, theirs in zip(self.cache.layers, cache.layers, strict=True):
            ours.keys = torch.cat([_pad_left(t, length, -2) for t in (ours.keys, theirs.keys)])
            ours.values = torch.cat([_pad_left(t, length, -2) for t in (ours.values, theirs.values)])
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)])
        self.rows = self.rows + rows
        self.positions = torch.cat([self.positions, positions])
        self.last = torch.cat([self.last, last])

    def _drop_ended(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if row.done is None]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache = [], DynamicCache()
            self.mask, self.positions, self.last = self.mask[:0, :0], self.positions[:0], self.last[:0]
            return
        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        # Columns no remaining row uses: cut them, so the cache is as long as its longest live row.
        cut = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, cut:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index.to(layer.keys.device), :, cut:]
            layer.values = layer.values[index.to(layer.values.device), :, cut:]
