"""ASGI plumbing for the server: request slots (429), the guard middleware (auth 401, body limit 413,
request metrics) and a server-sent-event response that notices a client leaving.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi.responses import JSONResponse
from starlette.responses import StreamingResponse

from tunesmith.serve.metrics import Metrics
from tunesmith.serve.protocol import APIError, error_body

PUBLIC_ROUTES = frozenset({"/health"})
RETRY_AFTER_S = 1
"""The ``Retry-After`` (seconds) of a 429: clients that honour it (the openai SDK does) come back then."""


class Slots:
    """Counts requests in progress; touched only on the event loop thread, so it needs no lock."""

    def __init__(self, cap: int, metrics: Metrics) -> None:
        self.cap, self.used, self.metrics = cap, 0, metrics

    def acquire(self) -> Callable[[], None]:
        """A slot, or 429; returns its release function (safe to call twice)."""
        if self.used >= self.cap:
            raise APIError(
                429,
                f"the server is at its limit of {self.cap} concurrent requests; retry shortly",
                type_="rate_limit_error",
                code="rate_limit_exceeded",
                # A slot frees when some generation ends, typically within a second on a small model.
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.used += 1
        self.metrics.add_in_flight(1)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used -= 1
                self.metrics.add_in_flight(-1)

        return release


def _json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: bearer-key check, body size limit, and per-route request metrics."""

    def __init__(
        self,
        app: Any,
        api_keys: tuple[str, ...],
        max_body_bytes: int,
        metrics: Metrics,
        public_paths: tuple[str, ...] = (),
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.keys = [key.encode() for key in api_keys]
        # Open without a key besides /health: the UI's page and its static files, which hold no data
        # (every data route they call still needs the key).
        self.public_paths = PUBLIC_ROUTES | set(public_paths)
        self.public_prefixes = public_prefixes

    def _public(self, path: str) -> bool:
        return path in self.public_paths or any(path.startswith(p) for p in self.public_prefixes)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        ok = False
        for key in self.keys:  # compare against every key, in constant time each: no early exit to time
            ok |= hmac.compare_digest(given.strip(), key)
        return ok and scheme.lower() == b"bearer"

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        """The whole body, or None when it is over the limit (declared or actual)."""
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, started = time.perf_counter(), False
        path = scope["path"]

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                # Counted before the client can see the response, so a client reading /metrics next sees it.
                started = True
                self.metrics.count_request(path, message["status"])
            await send(message)

        try:
            if self.keys and not self._public(path) and not self._authorized(scope):
                body = error_body("Incorrect or missing API key", code="invalid_api_key")
                response = _json_error(401, body, {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_and_record)
                return
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.max_body_bytes
                msg = f"request body is larger than the server's limit of {limit} bytes"
                response = _json_error(413, error_body(msg, code="request_too_large"))
                await response(scope, receive, send_and_record)
                return
            await self.app(scope, _replay(body, receive), send_and_record)
        finally:
            if not started:  # an exception escaped: the outer error middleware answers 500
                self.metrics.count_request(path, 500)
            self.metrics.observe_latency(path, time.perf_counter() - start)


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A receive() that gives the buffered body once, then passes through (to see the disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class EventStream(StreamingResponse):
    """SSE response that always watches for the client leaving, and runs ``on_close`` however it ends."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the socket went away mid-write
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.on_close()
