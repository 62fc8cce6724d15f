"""Batches from tokenized examples: a seeded order per epoch, right padding or packing, -100 off the loss.

The order of epoch ``e`` depends only on ``(seed, e)``, so the position in the data is two integers
(epoch, batch index) — which is what makes resume exact without pickling a sampler.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tunesmith.infer.batching import TokenData
from tunesmith.train.distributed import World, shard

GROUP_CHUNK_BATCHES = 32
"""With length grouping, examples are sorted by length within windows of this many batches: enough to
gather similar lengths, small enough that every batch still mixes examples from across the data."""


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group: bool = True
) -> list[list[int]]:
    """The epoch's batches as index lists; a pure function of (lengths, batch_size, seed, epoch).

    Grouping: shuffle, sort each window of ``GROUP_CHUNK_BATCHES`` batches by length, cut into batches, then
    shuffle the batch order (so long batches are not all at the end of each window).
    """
    order = epoch_order(len(lengths), seed, epoch)
    if not group:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * GROUP_CHUNK_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of examples (positions into ``lengths``) into rows of ``capacity``.

    Deterministic (ties broken by position), so a packed epoch is still a pure function of (seed, epoch).
    An example longer than ``capacity`` gets a row of its own.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    for pos in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, room in enumerate(free) if room >= lengths[pos]), None)
        if slot is None:
            rows.append([pos])
            free.append(capacity - lengths[pos])
        else:
            rows[slot].append(pos)
            free[slot] -= lengths[pos]
    return rows


def collate_packed(
    input_ids: list[list[int]], labels: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Several examples per row, padding-free up to the row's tail; rows are as wide as the longest example.

    ``position_ids`` restart at 0 for every example: with no attention mask given, transformers
    (``masking_utils.find_packed_sequence_indices``) turns the restarts into a block-diagonal causal mask, so
    attention never crosses examples. Each example's first label is set to -100: unpacked, the shift already
    drops it; packed, it would be predicted from the previous example's last token. Tail padding gets
    position 0 on every token (each its own one-token "sequence", label -100). ``attention_mask`` is returned
    only to count real tokens; the loss must not pass it to the model when ``position_ids`` is present.
    """
    lengths = [len(ids) for ids in input_ids]
    rows = pack_rows(lengths, max(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(rows), width), -100, dtype=torch.long)
    pos_t = torch.zeros((len(rows), width), dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            cols = slice(col, col + lengths[i])
            ids_t[r, cols] = torch.tensor(input_ids[i], dtype=torch.long)
            lab_t[r, cols] = torch.tensor([-100, *labels[i][1:]], dtype=torch.long)
            pos_t[r, cols] = torch.arange(lengths[i])
            attn[r, cols] = 1
            col += lengths[i]
    return {"input_ids": ids_t, "labels": lab_t, "position_ids": pos_t, "attention_mask": attn}


def iter_batches(
    data: TokenData,
    batch_size: int,
    pad_id: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    group_by_length: bool = True,
    packing: bool = False,
    world: World | None = None,
) -> Iterator[dict[str, torch.Tensor] | None]:
    """Yield the micro-batches of one epoch, skipping the first ``start_batch`` (resume).

    With ``world`` (several training processes), ``batch_size`` is the *global* micro-batch and each rank
    gets its :func:`~tunesmith.train.distributed.shard` of it, or None when its share is empty.

    Packing changes only how a micro-batch's examples are laid out in rows, never which examples it holds,
    so steps, gradient accumulation and the resume position are the same with and without it. Only plain
    rows pack (a pair's two rows or a prompt are laid out by their own ``collate``).
    """
    batches = length_grouped_batches(data.lengths(), batch_size, seed, epoch, group_by_length)
    for idx in batches[start_batch:]:
        if world is not None and world.size > 1:
            idx = shard(idx, world)
            if not idx:
                yield None
                continue
        if packing and type(data) is TokenData:
            yield collate_packed([data.input_ids[i] for i in idx], [data.labels[i] for i in idx], pad_id)
        else:
            yield data.collate(idx, pad_id)


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    return (n_examples + batch_size - 1) // batch_size
