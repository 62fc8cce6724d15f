"""Continuous batching: rows join a running decode batch and leave it, and each row's tokens stay exactly what
the row would generate alone (reference: ``model.generate`` through ``generate_texts``)."""

from __future__ import annotations

import threading

import torch

from tests.conftest import make_tiny_llama
from tests.unit.serve.fakes import FixedTokenModel
from tunesmith.infer.generate import generate_texts
from tunesmith.serve.batcher import Batcher
from tunesmith.serve.decode import DecodeBatch
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.models import LoadedBase, ServedModel
from tunesmith.serve.work import Finished, Job, SamplingParams, TextDelta

PROMPTS = (
    "Hi",
    "A much longer prompt than the others, with quite a few more words in it, so that its padding is the"
    " widest part of the cache while it runs and must be cut away once it has left the batch",
    "Mid size prompt",
)


def _served(model_id: str, model: torch.nn.Module, tokenizer) -> ServedModel:
    return ServedModel(model_id, "base", LoadedBase(model_id, model), tokenizer, "test", context_length=512)


class _Client:
    """Collects one job's events; ``first_delta`` and ``finished`` let a test wait for them."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name, self.order = name, order
        self.first_delta, self.finished = threading.Event(), threading.Event()
        self.done: Finished | None = None

    def __call__(self, event) -> None:
        if isinstance(event, TextDelta):
            self.first_delta.set()
        elif isinstance(event, Finished):
            self.done = event
            self.order.append(self.name)
            self.finished.set()


def test_rows_joining_and_leaving_midway_generate_what_they_would_alone(default_tokenizer):
    model = make_tiny_llama(len(default_tokenizer)).eval()
    served = _served("tiny", model, default_tokenizer)
    prompts = [default_tokenizer(p)["input_ids"] for p in PROMPTS]
    limits = [14, 4, 9]  # the long prompt joins and leaves first: the cache must shrink back after it
    order: list[str] = []
    clients = [_Client(str(i), order) for i in range(3)]
    jobs = [
        Job(served, client, prompt_ids=ids, params=SamplingParams(n, temperature=0.0))
        for client, ids, n in zip(clients, prompts, limits, strict=True)
    ]
    batch = DecodeBatch(served, lambda model_id, done: None)
    assert batch.admit(model, [jobs[0]]) == 1
    for _ in range(3):
        batch.step(model)
    assert batch.admit(model, jobs[1:]) == 3  # both join at a token boundary, as one prefill
    widths = []
    while len(batch):
        batch.step(model)
        if len(batch):
            assert bool(batch.mask[:, 0].any()), "a column no live row uses was kept"
            widths.append(batch.mask.shape[1])
    assert order == ["1", "2", "0"]
    assert widths[-1] < len(prompts[1])  # the long prompt's columns went with it
    expected = [
        generate_texts(model, default_tokenizer, [ids], n)[0] for ids, n in zip(prompts, limits, strict=True)
    ]
    assert [c.done.text.strip() for c in clients] == expected
    assert [c.done.completion_tokens for c in clients] == limits


def _letter(tokenizer, text: str) -> int:
    return tokenizer.encode(text, add_special_tokens=False)[0]


def _submit(batcher: Batcher, served: ServedModel, client: _Client, max_tokens: int) -> None:
    batcher.submit(Job(served, client, prompt_ids=[1, 2, 3], params=SamplingParams(max_tokens, 0.0)))


def test_a_late_request_joins_the_running_batch_instead_of_waiting(default_tokenizer):
    model = FixedTokenModel(
        _letter(default_tokenizer, "a"), delay_s=0.01
    )  # the long row lasts ~2 s: far longer than a join
    served = _served("m", model, default_tokenizer)
    metrics = Metrics([])
    batcher = Batcher(metrics, max_batch_size=8, wait_ms=0)
    order: list[str] = []
    long, short = _Client("long", order), _Client("short", order)
    batcher.start()
    try:
        _submit(batcher, served, long, 200)
        assert long.first_delta.wait(30)
        _submit(batcher, served, short, 3)
        assert long.finished.wait(60) and short.finished.wait(60)
    finally:
        batcher.stop()
    assert order == ["short", "long"]
    assert 2 in model.rows_per_forward  # the two rows shared decode forwards
    assert (metrics.batch_sizes.n, metrics.batch_sizes.total) == (2, 3.0)  # joins: 1 row, then 2


def test_a_request_for_another_model_makes_the_batch_drain_first(default_tokenizer):
    first = FixedTokenModel(_letter(default_tokenizer, "a"), delay_s=0.005)
    other = FixedTokenModel(_letter(default_tokenizer, "b"))
    served, served_other = _served("a", first, default_tokenizer), _served("b", other, default_tokenizer)
    batcher = Batcher(Metrics([]), max_batch_size=8, wait_ms=0)
    order: list[str] = []
    clients = {name: _Client(name, order) for name in ("long", "other", "late")}
    batcher.start()
    try:
        _submit(batcher, served, clients["long"], 100)
        assert clients["long"].first_delta.wait(30)
        _submit(batcher, served_other, clients["other"], 2)  # now at the head of the queue
        _submit(batcher, served, clients["late"], 2)  # same model as the batch, but behind "other"
        assert all(c.finished.wait(60) for c in clients.values())
    finally:
        batcher.stop()
    assert order == ["long", "other", "late"]
    assert max(first.rows_per_forward) == 1  # "late" never joined the running batch
