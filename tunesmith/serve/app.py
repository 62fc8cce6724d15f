"""The OpenAI-compatible HTTP API over a :class:`~tunesmith.serve.models.Registry`.

app = create_app(load_registry(["runs/support-bot"]), ServeSettings(api_keys=("s3cret",)))
uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both with
``stream``), ``POST /v1/classify`` (classification runs), ``POST /v1/score`` (reward-model runs: the
score of each answer to a conversation), ``POST /v1/feedback`` (a rating of an answer, with ``--capture``),
``GET /health``, ``GET /metrics`` (Prometheus).
Handlers only validate, tokenize and wait: every generating forward runs on the batching worker's thread
(a reward model's scores on a worker thread of their own, outside the slots). A fixed
number of slots bounds the work in progress; a request finding none free gets 429 at once instead of
queueing without limit, and a streaming client that disconnects gives its slot back and stops its row.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import DataError
from tunesmith.serve import protocol as p
from tunesmith.serve.batcher import Batcher, classification_prompt
from tunesmith.serve.http import EventStream, Guard, Slots
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.models import Registry, ServedModel
from tunesmith.serve.work import Event, Failed, Finished, Job, SamplingParams, Scores, TextDelta

ROUTES = (
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/classify",
    "/v1/score",
    "/v1/feedback",
    "/health",
    "/metrics",
)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching knobs; the defaults suit one CPU box."""

    api_keys: tuple[str, ...] = ()
    """Accepted bearer keys; empty means no authentication (only sensible on 127.0.0.1)."""
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 1024
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 256
    """``max_tokens`` when a request gives none (never past the model's context)."""
    max_concurrent: int = 16
    """Requests generating or waiting to generate at once; more get 429."""
    max_inputs: int = 32
    """Prompts per /v1/completions request and texts per /v1/classify request."""
    max_batch_size: int = 8
    """Rows decoding together (continuous batching); 1 turns batching off."""
    batch_wait_ms: float = 5.0
    prefix_cache_mb: float = 128.0
    """Per served model, keys and values of shared prompt heads the torch engine keeps; 0: off."""
    index: Any = None
    """A loaded ``tunesmith.rag.index.RetrievalIndex`` (``--index``): chat questions to every model get its
    top ``rag_k`` chunks in the prompt shape ``data raft`` trains on, and the response lists their ids under
    ``retrieved``. Without it, a run whose config names ``rag.index`` retrieves from that one."""
    rag_k: int | None = None
    """Chunks per question; None: the served run's ``rag.k``."""
    jobs_workers: int = 1
    """Fine-tuning jobs trained at once (worker processes), when the jobs API is on."""
    capture: Any = None
    """A :class:`tunesmith.serve.capture.Capture` (``--capture DIR``): every answer is written there,
    redacted, and ``/v1/feedback`` is on. None: nothing is captured and feedback is refused."""
    public_paths: tuple[str, ...] = ()
    """Exact paths served without a key (``tunesmith ui``'s page); the API routes never."""
    public_prefixes: tuple[str, ...] = ()
    """Path prefixes served without a key (``tunesmith ui``'s static files)."""


class _Api:
    """Route logic, kept apart from FastAPI wiring so each handler reads as validate -> submit -> answer."""

    def __init__(self, registry: Registry, settings: ServeSettings, metrics: Metrics) -> None:
        self.registry, self.settings, self.metrics = registry, settings, metrics
        self.batcher = Batcher(
            metrics, settings.max_batch_size, settings.batch_wait_ms, settings.prefix_cache_mb
        )
        self.slots = Slots(settings.max_concurrent, metrics)
        self.resolve: Callable[[str], None] | None = None

    async def served(self, model_id: str, task: str | None = None) -> ServedModel:
        if model_id not in self.registry.models and self.resolve is not None:
            # A fine-tuning job's model, hot-loaded on first use: off the event loop, because the load
            # waits for a batch running on the same base and other requests keep streaming meanwhile.
            await asyncio.to_thread(self.resolve, model_id)
        served = self.registry.models.get(model_id)
        if served is None:
            known = ", ".join(sorted(self.registry.models))
            raise p.APIError(
                404,
                f"The model `{model_id}` does not exist; served: {known}",
                param="model",
                code="model_not_found",
            )
        if task is not None and served.task != task:
            raise p.APIError(400, f"`{model_id}` is a {served.task} model, not a {task} one", param="model")
        return served

    def _submit(
        self,
        served: ServedModel,
        prompts: list[list[int]],
        params: SamplingParams | None,
        streaming: bool = False,
    ) -> tuple[asyncio.Queue[tuple[int, Event]], list[Job]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def emitter(index: int) -> Callable[[Event], None]:
            def emit(event: Event) -> None:
                if isinstance(event, TextDelta) and not streaming:
                    # Nobody reads it: waking the event loop per token only takes CPU from the decode
                    # (on 2 cores a non-streamed answer came 1.2x faster without these wake-ups).
                    return
                # RuntimeError: the loop closed, the server is stopping and nobody is listening.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, event))

            return emit

        if params is None:
            jobs = [Job(served, emitter(0), prompts=prompts)]
        else:
            jobs = [Job(served, emitter(i), prompt_ids=ids, params=params) for i, ids in enumerate(prompts)]
        for job in jobs:
            self.batcher.submit(job)
        return queue, jobs

    async def _results(self, queue: asyncio.Queue[tuple[int, Event]], n: int) -> list[Any]:
        results: list[Any] = [None] * n
        left = n
        while left:
            index, event = await queue.get()
            if isinstance(event, Failed):
                raise p.APIError(500, f"generation failed: {event.message}", type_="server_error")
            if isinstance(event, Finished | Scores):
                results[index], left = event, left - 1
        return results

    async def generate(
        self,
        served: ServedModel,
        prompts: list[list[int]],
        params: SamplingParams,
        chunk: Callable,
        on_done: Callable[[list[Finished]], None] | None = None,
    ) -> Any:
        """Run prompts; a JSON-ready list of :class:`Finished`, or (with ``chunk``) a streaming response.

        ``on_done`` gets every prompt's :class:`Finished` once all are done (streamed or not): the capture.
        """
        release = self.slots.acquire()
        try:
            queue, jobs = self._submit(served, prompts, params, streaming=chunk is not None)
        except BaseException:
            release()
            raise

        def close() -> None:
            for job in jobs:
                job.cancelled = True  # read by the worker: a row whose client left stops at its next token
            release()

        if chunk is not None:
            return EventStream(self._stream(queue, len(prompts), chunk, on_done), close)
        try:
            results = await self._results(queue, len(prompts))
        finally:
            close()
        self.metrics.count_responses(len(results))
        if on_done is not None:
            on_done(results)
        return results

    async def _stream(
        self,
        queue: asyncio.Queue[tuple[int, Event]],
        n: int,
        chunk: Callable,
        on_done: Callable[[list[Finished]], None] | None,
    ) -> AsyncIterator[bytes]:
        """SSE chunks as tokens arrive; ``chunk(index, text, finish, usage)`` builds the JSON."""
        first = chunk(0, None, None, None)
        if first is not None:
            yield p.sse(first)
        left, prompt_total, completion_total = n, 0, 0
        finished: list[Any] = [None] * n
        while left:
            index, event = await queue.get()
            if isinstance(event, TextDelta):
                yield p.sse(chunk(index, event.text, None, None))
            elif isinstance(event, Finished):
                left, finished[index] = left - 1, event
                prompt_total += event.prompt_tokens
                completion_total += event.completion_tokens
                yield p.sse(chunk(index, "", event.finish_reason, None))
            elif isinstance(event, Failed):
                yield p.sse(p.error_body(f"generation failed: {event.message}", "server_error"))
                break
        if left == 0:
            self.metrics.count_responses(n)
            if on_done is not None:
                on_done(finished)
            usage = chunk(0, None, None, p.usage(prompt_total, completion_total))
            if usage is not None:
                yield p.sse(usage)
        yield p.sse("[DONE]")

    async def classify(self, served: ServedModel, texts: list[str]) -> list[list[float]]:
        try:
            prompts = [classification_prompt(served, text) for text in texts]
        except DataError as err:
            raise p.APIError(500, str(err), type_="server_error") from None
        longest = max(len(ids) for ids in prompts) + max(
            len(served.tokenizer.encode(name, add_special_tokens=False)) + 1
            for name in served.label_names or [""]
        )
        if longest > served.context_length:
            raise p.APIError(
                400,
                f"This model's maximum context length is {served.context_length} tokens, but an input and "
                f"its label need {longest}. Shorten the input.",
                param="input",
                code="context_length_exceeded",
            )
        release = self.slots.acquire()
        jobs: list[Job] = []
        try:
            queue, jobs = self._submit(served, prompts, None)
            (scores,) = await self._results(queue, 1)
        finally:
            for job in jobs:
                job.cancelled = True  # a no-op once scored; skips the work if the handler was cancelled
            release()
        return scores.probabilities


def _retrieve_into(
    messages: list[dict[str, Any]], settings: ServeSettings, served: ServedModel
) -> list[str] | None:
    """With an index (``--index``, else the run's ``rag.index``), replace the last user turn by the retrieval
    prompt; the retrieved chunk ids."""
    index = settings.index if settings.index is not None else served.index
    if index is None:
        return None
    from tunesmith.rag.index import retrieve_prompt  # deferred: bm25s loads only for a server that retrieves

    k = served.rag_k if settings.rag_k is None else settings.rag_k
    for message in reversed(messages):
        if message.get("role") == "user":
            message["content"], ids = retrieve_prompt(index, str(message.get("content") or ""), k)
            return ids
    return []


def _chat_prompt(
    served: ServedModel, req: p.ChatRequest, settings: ServeSettings
) -> tuple[list[int], list[str] | None]:
    """Messages rendered with the model's own chat template, ready to generate the assistant turn, and the
    ids of the chunks retrieved into them (None without an index)."""
    tokenizer = served.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise p.APIError(400, f"`{served.id}` has no chat template; use /v1/completions", param="model")
    messages = p.message_dicts(req.messages, served.system_prompt)
    retrieved = _retrieve_into(messages, settings, served)
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as err:  # jinja errors, unknown roles: the messages cannot be rendered
        raise p.APIError(400, f"the chat template rejected these messages: {err}", param="messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), retrieved


def _inputs(value: str | list[str], name: str, limit: int) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts or len(texts) > limit:
        raise p.APIError(400, f"{name} takes 1 to {limit} strings per request, got {len(texts)}", param=name)
    return texts


def _chat_chunks(cid: str, model: str, include_usage: bool) -> Callable[..., dict[str, Any] | None]:
    def chunk(index: int, text: str | None, finish: str | None, use: dict | None) -> dict[str, Any] | None:
        if use is not None:
            return p.chat_chunk(cid, model, {}, use=use) if include_usage else None
        if text is None:
            return p.chat_chunk(cid, model, {"role": "assistant", "content": ""})
        return p.chat_chunk(cid, model, {"content": text} if text else {}, finish)

    return chunk


def _completion_chunks(cid: str, model: str, include_usage: bool) -> Callable[..., dict[str, Any] | None]:
    def chunk(index: int, text: str | None, finish: str | None, use: dict | None) -> dict[str, Any] | None:
        if use is not None:
            return p.completion_chunk(cid, model, 0, "", use=use) if include_usage else None
        return None if text is None else p.completion_chunk(cid, model, index, text, finish)

    return chunk


def _capturer(
    settings: ServeSettings,
    route: str,
    model: str,
    cid: str,
    messages: list[dict[str, Any]] | None = None,
    prompts: list[str] | None = None,
) -> Callable[[list[Finished]], None] | None:
    """The ``on_done`` that writes each answered prompt to ``--capture`` (None when capture is off)."""
    capture = settings.capture
    if capture is None:
        return None
    start = time.perf_counter()

    def on_done(results: list[Finished]) -> None:
        latency = time.perf_counter() - start
        for i, done in enumerate(results):
            write(i, done, latency)

    def write(i: int, done: Finished, latency: float) -> None:
        try:
            capture.record(
                route=route,
                model=model,
                response_id=cid,
                index=i,
                output=done.text,
                finish_reason=done.finish_reason,
                latency_s=latency,
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                messages=messages,
                prompt=None if prompts is None else prompts[i],
            )
        except OSError as err:  # a full disk must not turn an answered request into a 500
            print(f"tunesmith: warning: capture write failed: {err}", file=sys.stderr)

    return on_done


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the OpenAI shape, whatever raised it."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, p.APIError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(x) for x in first["loc"] if x != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return JSONResponse(p.error_body(message, param=param, code="invalid_request"), status_code=400)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        body = p.error_body(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(body, status_code=exc.status_code)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        body = p.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error")
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(p.APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crashed)


def _add_routes(app: FastAPI, api: _Api) -> None:
    settings, registry = api.settings, api.registry

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(registry.models)}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(api.metrics.render(), media_type=PROMETHEUS_TEXT)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [p.model_card(s) for s in registry.models.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return p.model_card(await api.served(model_id))

    @app.post("/v1/chat/completions")
    async def chat(req: p.ChatRequest) -> Any:
        served = await api.served(req.model)
        asked = p.message_dicts(req.messages, None) if settings.capture is not None else None
        ids, retrieved = _chat_prompt(served, req, settings)
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = p.sampling_params(
            req,
            max_tokens,
            len(ids),
            served.context_length,
            settings.max_tokens_cap,
            settings.default_max_tokens,
        )
        cid = p.new_id("chatcmpl")
        record = _capturer(settings, "chat", served.id, cid, messages=asked)
        if req.stream:
            include = bool((req.stream_options or {}).get("include_usage"))
            return await api.generate(served, [ids], params, _chat_chunks(cid, served.id, include), record)
        (done,) = await api.generate(served, [ids], params, None, record)
        answer = p.chat_response(cid, served.id, done)
        if retrieved is not None:  # an extra field: OpenAI clients keep it in model_extra
            answer["retrieved"] = retrieved
        return answer

    @app.post("/v1/completions")
    async def completions(req: p.CompletionRequest) -> Any:
        served = await api.served(req.model)
        texts = _inputs(req.prompt, "prompt", settings.max_inputs)
        prompts = [list(served.tokenizer(t)["input_ids"]) for t in texts]
        if any(not ids for ids in prompts):
            raise p.APIError(400, "prompt is empty", param="prompt")
        longest = max(len(ids) for ids in prompts)
        params = p.sampling_params(
            req,
            req.max_tokens,
            longest,
            served.context_length,
            settings.max_tokens_cap,
            settings.default_max_tokens,
        )
        cid = p.new_id("cmpl")
        record = _capturer(settings, "completion", served.id, cid, prompts=texts)
        if req.stream:
            include = bool((req.stream_options or {}).get("include_usage"))
            chunks = _completion_chunks(cid, served.id, include)
            return await api.generate(served, prompts, params, chunks, record)
        results = await api.generate(served, prompts, params, None, record)
        return p.completion_response(cid, served.id, results)

    @app.post("/v1/classify")
    async def classify(req: p.ClassifyRequest) -> dict[str, Any]:
        served = await api.served(req.model, task="classification")
        texts = _inputs(req.input, "input", settings.max_inputs)
        probabilities = await api.classify(served, texts)
        labels = served.label_names or []
        data = [
            {
                "index": i,
                "label": labels[max(range(len(row)), key=row.__getitem__)],
                "probabilities": dict(zip(labels, row, strict=True)),
            }
            for i, row in enumerate(probabilities)
        ]
        return {"object": "list", "model": served.id, "data": data}

    @app.post("/v1/score")
    async def score(req: p.ScoreRequest) -> dict[str, Any]:
        scorer = registry.scorers.get(req.model)
        if scorer is None:
            known = ", ".join(sorted(registry.scorers)) or "none (serve a run trained with objective: reward)"
            raise p.APIError(
                404, f"`{req.model}` is not a served reward model; served: {known}", param="model"
            )
        answers = _inputs(req.input, "input", settings.max_inputs)
        item = {"messages": p.message_dicts(req.messages, None) if req.messages else []}
        # A reward model's forward is one short pass per answer: run off the event loop, not batched.
        scores = await asyncio.to_thread(scorer, answers, [item] * len(answers))
        data = [{"index": i, "score": s} for i, s in enumerate(scores)]
        return {"object": "list", "model": req.model, "data": data}


def _add_feedback_route(app: FastAPI, api: _Api) -> None:
    capture = api.settings.capture

    @app.post("/v1/feedback")
    async def feedback(req: p.FeedbackRequest) -> dict[str, Any]:
        if capture is None:
            raise p.APIError(
                404,
                "feedback is off: start the server with `--capture DIR` to keep answers and their feedback",
                code="feedback_disabled",
            )
        if not capture.is_known(req.response_id, req.index):
            raise p.APIError(
                404,
                f"no captured answer has the id {req.response_id!r} (index {req.index}); send the `id` of a "
                "chat or completion response from this server",
                param="response_id",
                code="response_not_found",
            )
        score = capture.feedback(req.response_id, req.rating, req.index, req.correction, req.comment)
        api.metrics.add_feedback(score)
        return {"object": "feedback", "response_id": req.response_id, "index": req.index, "score": score}


def create_app(
    registry: Registry, settings: ServeSettings | None = None, jobs_root: Path | None = None
) -> FastAPI:
    """The FastAPI app serving ``registry``; its batching worker starts and stops with the app's lifespan.

    Args:
        registry: models to serve (see :func:`tunesmith.serve.models.load_registry`).
        settings: keys, limits and batching; defaults when None.
        jobs_root: mount the fine-tuning API (:mod:`tunesmith.serve.jobs`) on this jobs directory.
    """
    settings = settings or ServeSettings()
    api = _Api(registry, settings, Metrics(ROUTES))
    jobs = None
    if jobs_root is not None:
        from tunesmith.serve.jobs import JobsApi  # deferred: the jobs routes are off by default

        jobs = JobsApi(jobs_root, registry, settings.jobs_workers)
        api.resolve = jobs.resolve

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        api.batcher.start()
        workers = jobs.start_workers() if jobs is not None else []
        try:
            yield
        finally:
            if jobs is not None:
                jobs.stop_workers(workers)
            api.batcher.stop()

    # No /docs or /openapi.json: the API is OpenAI's, documented there and in the README.
    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api
    app.add_middleware(
        Guard,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        metrics=api.metrics,
        public_paths=settings.public_paths,
        public_prefixes=settings.public_prefixes,
    )
    _add_error_handlers(app)
    _add_routes(app, api)
    _add_feedback_route(app, api)
    if jobs is not None:
        jobs.add_routes(app)
    return app
