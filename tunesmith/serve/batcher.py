"""The model worker: one background thread owns every model and runs jobs in dynamic batches.

Requests become jobs on a queue. The worker takes the oldest job, then waits up to ``wait_ms`` for more
jobs for the SAME model id (another adapter means another set of weights, so never the same forward) and
runs them as one left-padded ``model.generate``. While a batch runs, new requests queue up and form the next
batch, so under load batches fill without any extra wait. On 2 CPU cores one forward at a time is also the
fastest schedule: two concurrent forwards would only fight over the cores.

Each row of a batch keeps its own sampling settings: a logits processor draws every row's token with that
row's temperature, top-p and seeded generator and hands ``generate`` a one-hot score, so its greedy step
picks exactly that token. A stopping criterion sees each new token, streams the text, applies ``stop``
strings and ``max_tokens``, and ends rows whose client went away.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from tunesmith.data.formats import Example
from tunesmith.data.render import render_prompt
from tunesmith.infer.batching import collate
from tunesmith.infer.generate import label_log_likelihoods, label_token_ids
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.models import ServedModel, activate

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


class _Row:
    """One generation in a batch: its sampler, its text so far and what has been streamed."""

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


class _Sampler(LogitsProcessor):
    """Draws each row's token with its own settings; returns scores whose argmax is that token."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        picks = [row.pick(scores[i]) if row.done is None else 0 for i, row in enumerate(self.rows)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks)), torch.tensor(picks)] = 0.0
        return out


class _Stopper(StoppingCriteria):
    """Feeds each row its newest token; a row is done at end of turn, a stop string, max_tokens or cancel."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.done is None:
                row.push(token)
        return torch.tensor([row.done is not None for row in self.rows], device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids


def _device(model: Any) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def run_generation(jobs: list[Job], on_done: Callable[[str, Finished], None] = lambda m, f: None) -> None:
    """Generate for jobs of one model in a single left-padded ``generate``; emits events as tokens arrive.

    ``on_done(model_id, finished)`` runs for each row as it finishes, just before its client is told.
    """
    served = jobs[0].served
    tokenizer = served.tokenizer
    with activate(served) as model:
        rows = [_Row(job, _eos_ids(model, tokenizer), on_done) for job in jobs]
        batch = collate([job.prompt_ids for job in jobs], None, tokenizer.pad_token_id, pad_left=True)
        device = _device(model)
        config = GenerationConfig(
            max_new_tokens=max(row.params.max_tokens for row in rows),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(rows[0].eos_ids) or None,
        )
        model.generate(
            **{k: v.to(device) for k, v in batch.items()},
            generation_config=config,
            logits_processor=LogitsProcessorList([_Sampler(rows)]),
            stopping_criteria=StoppingCriteriaList([_Stopper(rows)]),
        )
    for row in rows:
        row.finish("cancelled" if row.job.cancelled else "length")


def classification_prompt(served: ServedModel, text: str) -> list[int]:
    """The prompt a classification run was trained to answer with a label: its label prompt as a user turn."""
    example = Example(source="request", line=1, kind="classification", text=text)
    return render_prompt(example, served.tokenizer, served.system_prompt, served.label_prompt)


def run_classification(jobs: list[Job]) -> None:
    """Label probabilities (softmax over label log-likelihoods) for every prompt of every job, batched."""
    served = jobs[0].served
    tokenizer = served.tokenizer
    prompts = [prompt for job in jobs for prompt in job.prompts]
    labels = label_token_ids(tokenizer, served.label_names or [])
    with activate(served) as model:
        scores = label_log_likelihoods(model, prompts, labels, tokenizer.pad_token_id, desc="classify")
    probs = scores.softmax(dim=-1).tolist()
    start = 0
    for job in jobs:
        job.emit(Scores(probs[start : start + len(job.prompts)]))
        start += len(job.prompts)


class Batcher:
    """Owns the models: one worker thread takes jobs off a queue and runs them in per-model batches.

    Args:
        metrics: where batch sizes, token counts and cancellations are recorded.
        max_batch_size: most jobs per batch; 1 turns batching off.
        wait_ms: how long the first job of a batch waits for company.
    """

    def __init__(self, metrics: Metrics, max_batch_size: int = 8, wait_ms: float = 5.0) -> None:
        self.metrics = metrics
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        metrics.queue_depth = lambda: len(self._pending)

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="tunesmith-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to exit after its current batch; queued jobs are failed, not left hanging."""
        with self._cond:
            self._stop = True
            left, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in left:
            job.emit(Failed("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()

    def _next_batch(self) -> list[Job]:
        """The oldest job plus, within the wait window, queued jobs for the same model (others keep order)."""
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait(0.5)
            if self._stop:
                return []
            first = self._pending.popleft()
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch_size:
                match = next((j for j in self._pending if j.key == first.key), None)
                if match is not None:
                    self._pending.remove(match)
                    batch.append(match)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop:
                    break
                self._cond.wait(remaining)
            for job in batch:
                if job.cancelled:  # its client left while it waited
                    self.metrics.add_cancelled()
            return [job for job in batch if not job.cancelled]

    def _loop(self) -> None:
        while not self._stop:
            batch = self._next_batch()
            if batch:
                self._run(batch)

    def _record(self, model_id: str, done: Finished) -> None:
        self.metrics.add_tokens(model_id, done.prompt_tokens, done.completion_tokens)
        if done.finish_reason == "cancelled":
            self.metrics.add_cancelled()

    def _run(self, batch: list[Job]) -> None:
        self.metrics.observe_batch(len(batch))
        try:
            if batch[0].params is None:
                run_classification(batch)
                return
            run_generation(batch, self._record)
        except Exception as err:  # one bad batch must not kill the worker every other request depends on
            for job in batch:
                job.emit(Failed(f"{type(err).__name__}: {err}"))
