"""What the serving worker works on: requests as jobs, the events it sends back, and one generating row.

A :class:`Job` is one prompt (or, for classification, a list of texts) queued by an HTTP handler; the worker
answers through ``job.emit`` with :class:`TextDelta` pieces and one :class:`Finished` (or :class:`Scores`,
or :class:`Failed`). A :class:`Row` is a job while it generates: it draws each token with the job's own
temperature, top-p and seed, streams the text, applies ``stop`` strings and ``max_tokens``, and ends when
its client went away.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tunesmith.serve.models import ServedModel

GREEDY_BELOW = 1e-4
"""Temperatures under this sample greedily (a request may send 1e-300: legal, and the same answer)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class TextDelta:
    text: str


@dataclass
class Finished:
    finish_reason: str
    """``stop`` (end of turn or a stop string), ``length`` (max_tokens) or ``cancelled``."""
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Scores:
    probabilities: list[list[float]]


@dataclass
class Failed:
    message: str


Event = TextDelta | Finished | Scores | Failed


@dataclass
class Job:
    """Work for the model thread; ``emit`` must be thread-safe (the app passes a call_soon_threadsafe)."""

    served: ServedModel
    emit: Callable[[Event], None]
    prompt_ids: list[int] = field(default_factory=list)
    params: SamplingParams | None = None
    """Set for generation; None means classification: score the labels after each of ``prompts``."""
    prompts: list[list[int]] = field(default_factory=list)
    cancelled: bool = False

    @property
    def key(self) -> tuple[str, bool]:
        return self.served.id, self.params is None


def fail_rows(rows: list[Row], message: str) -> None:
    """Tell every row still running that it failed (a batch that cannot go on: an error, a shutdown)."""
    for row in rows:
        if row.done is None:
            row.job.emit(Failed(message))


class Row:
    """One generation in a decode batch: its sampler, its text so far and what has been streamed."""

    def __init__(self, job: Job, eos_ids: set[int], on_done: Callable[[str, Finished], None]) -> None:
        assert job.params is not None
        self.job, self.params, self.eos_ids, self.on_done = job, job.params, eos_ids, on_done
        seed = self.params.seed if self.params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        # A stop string may be half-generated at the end of the text: hold that much back from the stream.
        self.hold = max((len(s) for s in self.params.stop), default=1) - 1
        self.done: Finished | None = None

    def pick(self, logits: torch.Tensor) -> int:
        # Sampling tends to argmax as temperature -> 0; below this the division overflows fp32 to inf/NaN.
        if self.params.temperature < GREEDY_BELOW:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        ordered, order = probs.sort(descending=True)
        # Nucleus: keep the most likely tokens until their mass reaches top_p (always at least one).
        keep = (ordered.cumsum(0) - ordered) < self.params.top_p
        keep[0] = True  # a top_p that underflows fp32 (1e-300) would otherwise keep none
        choice = torch.multinomial(ordered * keep, 1, generator=self.generator)
        return int(order[choice])

    def push(self, token: int) -> None:
        if self.job.cancelled:
            self.finish("cancelled")
            return
        if token in self.eos_ids:
            self.finish("stop")
            return
        self.ids.append(token)
        self.text = self.job.served.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish("stop")
        elif len(self.ids) >= self.params.max_tokens:
            self.finish("length")
        else:
            end = len(self.text) - self.hold
            while end > self.sent and self.text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                end -= 1
            self._send(end)

    def _send(self, end: int) -> None:
        if end > self.sent:
            self.job.emit(TextDelta(self.text[self.sent : end]))
            self.sent = end

    def finish(self, reason: str) -> None:
        if self.done is not None:
            return
        self._send(len(self.text))
        self.done = Finished(reason, self.text, len(self.job.prompt_ids), len(self.ids))
        self.on_done(self.job.served.id, self.done)  # before the client hears of it: metrics stay consistent
        self.job.emit(self.done)
