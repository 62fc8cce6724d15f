"""The model worker: one background thread owns every model and runs every forward.

Requests become jobs on a queue. Generation runs as continuous batching (:mod:`tunesmith.serve.decode`): the
worker starts a decode batch with the oldest job plus, within ``wait_ms``, queued jobs for the SAME model id
(another adapter means another set of weights, so never the same forward); between two decode steps it lets
newly queued jobs of that model join, up to ``max_batch_size`` rows, and rows leave as they end. When the
oldest queued job is for another model (or is a classification), nothing joins any more: the batch drains
and that job goes next, so one busy model cannot starve the others. On 2 CPU cores one forward at a time is
also the fastest schedule: two concurrent forwards would only fight over the cores.

The model is activated (its adapter switched on) for each forward, not for the whole batch, so a hot-load on
another thread waits one forward, not until a stream of requests ends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from tunesmith.data.formats import Example
from tunesmith.data.render import render_prompt
from tunesmith.infer.generate import label_log_likelihoods, label_token_ids
from tunesmith.serve.decode import DecodeBatch
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.models import ServedModel, activate
from tunesmith.serve.prefix import PrefixStore
from tunesmith.serve.work import Failed, Finished, Job, Scores

if TYPE_CHECKING:
    from tunesmith.serve.llamacpp import LlamaCppBatch


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


def _batch_class(served: ServedModel) -> type[DecodeBatch] | type[LlamaCppBatch]:
    """Where the rows of ``served`` decode: llama.cpp when it has an engine, else the torch model."""
    if served.engine is None:
        return DecodeBatch
    from tunesmith.serve.llamacpp import LlamaCppBatch  # deferred: llama_cpp is an optional extra

    return LlamaCppBatch


class Batcher:
    """Owns the models: one worker thread takes jobs off a queue and runs them (generation continuously
    batched).

    Args:
        metrics: where batch sizes, token counts and cancellations are recorded.
        max_batch_size: most rows decoding together; 1 turns batching off.
        wait_ms: how long the first job of a new batch waits for company.
        prefix_cache_mb: per served model, the keys and values of shared prompt heads the torch engine keeps
            (:mod:`tunesmith.serve.prefix`); 0 turns prefix caching off.
    """

    def __init__(
        self, metrics: Metrics, max_batch_size: int = 8, wait_ms: float = 5.0, prefix_cache_mb: float = 0.0
    ) -> None:
        self.metrics = metrics
        self.prefix_bytes = int(prefix_cache_mb * 2**20)
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._decoding: DecodeBatch | LlamaCppBatch | None = None
        metrics.queue_depth = lambda: len(self._pending)

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="tunesmith-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the worker to exit after its current forward; queued and running jobs are failed, not left
        hanging."""
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

    def _take_live(self, jobs: list[Job]) -> list[Job]:
        for job in jobs:
            if job.cancelled:  # its client left while it waited
                self.metrics.add_cancelled()
        return [job for job in jobs if not job.cancelled]

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
            return self._take_live(batch)

    def _joiners(self, decoding: DecodeBatch | LlamaCppBatch) -> list[Job]:
        """Queued jobs that may join the running batch: same model, room left, and no other model waiting
        at the head of the queue (then the batch drains instead)."""
        with self._cond:
            room = self.max_batch_size - len(decoding)
            if room <= 0 or not self._pending or self._pending[0].key != decoding.key:
                return []
            joining = [job for job in self._pending if job.key == decoding.key][:room]
            for job in joining:
                self._pending.remove(job)
        return self._take_live(joining)

    def _loop(self) -> None:
        try:
            while not self._stop:
                if self._decoding is None:
                    batch = self._next_batch()
                    if not batch:
                        continue
                    if batch[0].params is None:
                        self._classify(batch)
                        continue
                    served = batch[0].served
                    if served.prefixes is None and self.prefix_bytes > 0:
                        served.prefixes = PrefixStore(self.prefix_bytes)
                    self._decoding = _batch_class(served)(served, self._record)
                    self._advance(batch)
                else:
                    self._advance(self._joiners(self._decoding))
                if self._decoding is not None and not len(self._decoding):
                    self._decoding = None
        finally:
            if self._decoding is not None:
                self._decoding.fail("the server is shutting down")
                self._decoding = None

    def _record(self, model_id: str, done: Finished) -> None:
        self.metrics.add_tokens(model_id, done.prompt_tokens, done.completion_tokens)
        if done.finish_reason == "cancelled":
            self.metrics.add_cancelled()

    def _advance(self, joining: list[Job]) -> None:
        """Splice ``joining`` into the running batch (one prefill), else run one decode step."""
        decoding = self._decoding
        assert decoding is not None
        try:
            with activate(decoding.served) as model:
                if joining:
                    self.metrics.observe_batch(decoding.admit(model, joining))
                else:
                    decoding.step(model)
        except Exception as err:  # one bad batch must not kill the worker every other request depends on
            for job in joining:
                job.emit(Failed(f"{type(err).__name__}: {err}"))
            decoding.fail(f"{type(err).__name__}: {err}")

    def _classify(self, batch: list[Job]) -> None:
        self.metrics.observe_batch(len(batch))
        try:
            run_classification(batch)
        except Exception as err:  # as in _advance: the worker outlives a bad batch
            for job in batch:
                job.emit(Failed(f"{type(err).__name__}: {err}"))
