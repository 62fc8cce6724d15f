"""Prefix caching on the torch engine: a stored prompt head is not prefilled again, and rows that reuse one
generate exactly what they would alone (reference: ``model.generate`` through ``generate_texts``)."""

from __future__ import annotations

import torch

from tests.conftest import make_tiny_llama
from tests.unit.serve.test_decode import _Client, _served
from tunesmith.infer.generate import generate_texts
from tunesmith.serve.decode import DecodeBatch
from tunesmith.serve.prefix import MIN_SHARED_TOKENS, PrefixStore
from tunesmith.serve.work import Job, SamplingParams

HEADER = (
    "You answer questions about the store. Be brief and friendly, quote opening hours exactly, and say when"
    " you do not know.\nQuestion: "
)
QUESTIONS = (
    "When do you open?",
    "Do you sell gift cards at the counter?",
    "Which bus goes there?",
    "Parking?",
)
STEPS = 6


def _prompt_lengths(model: torch.nn.Module) -> list[int]:
    """Records the input length of every forward of ``model`` (prefill: >1, decode step: 1)."""
    lengths: list[int] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    return lengths


def _assert_cache_is_a_full_prefill(model, batch: DecodeBatch, row: int, prompt: list[int]) -> None:
    """The row's keys and values at its real columns are those of prefilling its whole prompt alone."""
    with torch.inference_mode():
        reference = model(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values
    columns = batch.mask[row].nonzero().squeeze(-1)
    for ours, theirs in zip(batch.cache.layers, reference.layers, strict=True):
        torch.testing.assert_close(ours.keys[row, :, columns], theirs.keys[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.values[row, :, columns], theirs.values[0], rtol=1e-5, atol=1e-5)


def _jobs(served, tokenizer, questions):
    prompts = [tokenizer(HEADER + q)["input_ids"] for q in questions]
    clients = [_Client(q, []) for q in questions]
    jobs = [
        Job(served, client, prompt_ids=ids, params=SamplingParams(STEPS, temperature=0.0))
        for client, ids in zip(clients, prompts, strict=True)
    ]
    return prompts, clients, jobs


def _run(batch: DecodeBatch, model, jobs) -> None:
    batch.admit(model, jobs)
    while len(batch):
        batch.step(model)


def test_a_shared_head_is_stored_then_reused_and_rows_generate_what_they_would_alone(default_tokenizer):
    model = make_tiny_llama(len(default_tokenizer)).eval()
    served = _served("tiny", model, default_tokenizer)
    served.prefixes = store = PrefixStore(1 << 20)
    prompts, clients, jobs = _jobs(served, default_tokenizer, QUESTIONS)
    head = len(default_tokenizer(HEADER.rstrip())["input_ids"]) - 1  # a token or two may merge at the seam
    assert head >= MIN_SHARED_TOKENS

    _run(DecodeBatch(served, lambda *_: None), model, jobs[:1])  # first sight: nothing shared yet
    _run(DecodeBatch(served, lambda *_: None), model, jobs[1:2])  # shares the header with the first: stored
    assert store.reused_tokens == 0 and len(store.heads) == 1
    (stored,) = store.heads
    assert len(stored) >= head and stored == tuple(prompts[0][: len(stored)])

    lengths = _prompt_lengths(model)
    batch = DecodeBatch(served, lambda *_: None)
    batch.admit(model, jobs[2:3])  # a row on its own, reusing the head
    assert lengths[-1] == len(prompts[2]) - len(stored)  # only the rest of the prompt was prefilled
    _assert_cache_is_a_full_prefill(model, batch, 0, prompts[2])
    batch.step(model)
    batch.admit(model, jobs[3:])  # joins the running row, reusing it too
    assert lengths[-1] == len(prompts[3]) - len(stored)
    while len(batch):
        batch.step(model)
    assert store.reused_tokens == 2 * len(stored)

    expected = [generate_texts(model, default_tokenizer, [ids], STEPS)[0] for ids in prompts]
    assert [c.done.text.strip() for c in clients] == expected


def test_one_admission_mixes_rows_with_a_stored_head_and_without(default_tokenizer):
    model = make_tiny_llama(len(default_tokenizer)).eval()
    served = _served("tiny", model, default_tokenizer)
    served.prefixes = store = PrefixStore(1 << 20)
    *_, jobs = _jobs(served, default_tokenizer, QUESTIONS[:2])
    _run(DecodeBatch(served, lambda *_: None), model, jobs)  # the second stores the shared header
    other = default_tokenizer("Something else entirely, unrelated to any header the store has seen")[
        "input_ids"
    ]
    more, more_clients, more_jobs = _jobs(served, default_tokenizer, QUESTIONS[2:])
    fresh_client = _Client("fresh", [])
    fresh = Job(served, fresh_client, prompt_ids=other, params=SamplingParams(STEPS, temperature=0.0))
    lengths = _prompt_lengths(model)
    batch = DecodeBatch(served, lambda *_: None)
    assert batch.admit(model, [more_jobs[0], fresh, more_jobs[1]]) == 3
    for row, prompt in enumerate([*more, other]):  # rows in order of their groups: the head's first
        _assert_cache_is_a_full_prefill(model, batch, row, prompt)
    while len(batch):
        batch.step(model)
    (stored,) = store.heads
    assert sorted(lengths[:2]) == sorted([len(other), max(len(p) - len(stored) for p in more)])
    expected = [generate_texts(model, default_tokenizer, [ids], STEPS)[0] for ids in [*more, other]]
    assert [c.done.text.strip() for c in [*more_clients, fresh_client]] == expected


def test_models_with_a_sliding_window_do_not_reuse_heads(default_tokenizer):
    model = make_tiny_llama(len(default_tokenizer)).eval()
    model.config.sliding_window = 4096  # the padding between a head and the rest would take window places
    served = _served("tiny", model, default_tokenizer)
    served.prefixes = store = PrefixStore(1 << 20)
    *_, jobs = _jobs(served, default_tokenizer, QUESTIONS)
    for job in jobs:
        _run(DecodeBatch(served, lambda *_: None), model, [job])
    assert store.reused_tokens == 0 and not store.heads


def _layers(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, 2, tokens, 8), torch.zeros(1, 2, tokens, 8))]  # 128 bytes a token


def test_the_store_keeps_its_byte_budget_evicting_the_least_recently_used_head():
    store = PrefixStore(max_bytes=128 * 50)
    a, b, c = (tuple(range(start, start + 20)) for start in (0, 100, 200))
    store.put(a, _layers(20))
    store.put(b, _layers(20))
    assert store.match([*a, 7]) == a  # a is used again: b is now the oldest
    store.put(c, _layers(20))  # 60 tokens > 50: one head goes
    assert list(store.heads) == [a, c] and store.bytes == 128 * 40
    assert store.match(list(a)) is None  # a head needs a token after it
    store.put(tuple(range(1000, 1060)), _layers(60))  # larger than the whole budget: not kept
    assert list(store.heads) == [a, c]


def test_only_heads_shared_with_a_recent_prompt_and_long_enough_are_worth_storing():
    store = PrefixStore(max_bytes=1 << 20)
    head = list(range(MIN_SHARED_TOKENS))
    assert store.worth_storing([*head, 1, 2], reused=0) == 0  # nothing seen before
    assert store.worth_storing([*head, 1, 3], reused=0) == MIN_SHARED_TOKENS + 1
    assert store.worth_storing([*head[:-1], 9, 9], reused=0) == 0  # shares one token too few
    assert store.worth_storing([*head, 1, 3], reused=MIN_SHARED_TOKENS + 1) == 0  # nothing longer to add
    assert store.worth_storing([*head, 1, 3], reused=0) == MIN_SHARED_TOKENS + 1  # never the whole prompt
    assert PrefixStore(max_bytes=0).worth_storing([*head, 1], reused=0) == 0
