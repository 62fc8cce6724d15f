"""Server abuse and soak: a real ``tunesmith serve`` process (tiny model, 127.0.0.1 only) takes a mix of bad
and good requests from :data:`CLIENTS` threads, then must still be healthy.

The mix, in turn: no key, wrong key, malformed JSON, a body over the limit, ``max_tokens`` over the cap, an
unknown model, path tricks (``../`` in model ids), a good chat request, a streaming client that disconnects
after the first chunk, and a body sent slowly in pieces. Afterwards ``/health`` answers, a good request
succeeds, no generation slot is held (``tunesmith_in_flight_requests`` is 0), the server's RSS grew less than
a bound, a burst of simultaneous requests past the slots gets 429s, every 429 carried ``Retry-After``, and
neither API key appears in the server's log.

``make test`` sends :data:`SHORT` requests; ``make chaos`` sends :data:`LONG`. Both stop by themselves: every
socket has a timeout and the server is terminated at the end. The figures print with ``pytest -s``.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.conftest import make_tiny_llama

KEY = "soak-key-0123456789abcdef"
WRONG = "soak-wrong-fedcba9876543210"
SHORT, LONG = 600, 10_000
SLOTS, CLIENTS, BURST = 6, 4, 24
"""Generation slots of the server, client threads of the mix (fewer: a 429 there means slots are slow to come
back) and simultaneous good requests of the saturation burst afterwards (more: 429s with Retry-After)."""
BODY_LIMIT, CAP = 16_000, 8
RSS_BOUND_MB = {SHORT: 150, LONG: 250}
"""Allowed RSS growth of the server (after a warm-up) per run length: the bound the note quotes."""
CHAT = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
EXPECTED = {
    "no_key": {401},
    "wrong_key": {401},
    "malformed_json": {400},
    "huge_body": {413},
    "over_cap": {400},
    "unknown_model": {404},
    "path_trick": {404},
    "good": {200, 429},
    "disconnect": {200, 429},
    "slow_body": {200, 429},
}
KINDS = list(EXPECTED)


class Server:
    """``tunesmith serve`` in a child process, its output in a log file."""

    def __init__(self, root: Path, base: Path) -> None:
        keys = root / "keys"
        keys.write_text(KEY + "\n")
        keys.chmod(0o600)
        with socket.socket() as probe:  # a free port; the tiny window before serve binds it is harmless here
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = root / "server.log"
        command = [sys.executable, "-m", "tunesmith.cli", "serve", str(base), "--port", str(self.port)]
        command += ["--api-key-file", str(keys), "--max-concurrent", str(SLOTS), "--max-tokens-cap", str(CAP)]
        command += ["--max-body-bytes", str(BODY_LIMIT), "--batch-wait-ms", "1"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + 180  # import torch + load the model on a loaded 2-core box
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.request("GET", "/health", key=None)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("tunesmith serve did not come up in 180 s")

    def request(self, method, path, body=None, key=KEY, headers=None):
        """(status, headers, body bytes) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            sent = {"Content-Type": "application/json", **(headers or {})}
            if key is not None:
                sent["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def raw(
        self, head: bytes, pieces: list[bytes], pause: float, hang_up_at: bytes | None
    ) -> tuple[int, bytes]:
        """Send a request by hand (body in ``pieces``, ``pause`` s apart): the status and the response head.
        With ``hang_up_at``, the client closes the socket as soon as those bytes arrive (mid-stream)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            sock.sendall(head)
            for piece in pieces:
                time.sleep(pause)
                sock.sendall(piece)
            received = b""
            while b"\r\n\r\n" not in received or (hang_up_at is not None and hang_up_at not in received):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        status = int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else -1
        return status, received.split(b"\r\n\r\n")[0]

    def metric(self, name: str) -> float:
        text = self.request("GET", "/metrics")[2].decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def rss_mb(self) -> float:
        """Resident memory of the server: the child process (python -m tunesmith.cli serve)."""
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _post_head(path: str, length: int, key: str | None = KEY) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def _one(server: Server, kind: str, i: int) -> tuple[str, int, bool]:
    """Send request ``i`` of ``kind``: (kind, status, a 429 without Retry-After)."""
    chat = "/v1/chat/completions"
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": f"Hi {i}"}]}).encode()
    head = b""
    if kind in ("disconnect", "slow_body"):
        if kind == "disconnect":  # hang up after the first streamed chunk
            stream = json.dumps({**CHAT, "stream": True, "max_tokens": CAP}).encode()
            status, head = server.raw(_post_head(chat, len(stream)) + stream, [], 0, hang_up_at=b"data: ")
        else:  # the body arrives in three pieces, 20 ms apart
            cut = [0, len(body) // 3, 2 * len(body) // 3, len(body)]
            thirds = [body[a:b] for a, b in itertools.pairwise(cut)]
            status, head = server.raw(_post_head(chat, len(body)), thirds, 0.02, hang_up_at=None)
        return kind, status, status == 429 and b"retry-after:" not in head.lower()
    path, payload, key = chat, body, KEY
    if kind == "no_key":
        key = None
    elif kind == "wrong_key":
        key = WRONG
    elif kind == "malformed_json":
        payload = body[: len(body) // 2]
    elif kind == "huge_body":
        payload = b"x" * (BODY_LIMIT + 1 + i % 1000)
    elif kind == "over_cap":
        payload = json.dumps({**CHAT, "max_tokens": CAP + 1}).encode()
    elif kind == "unknown_model":
        payload = json.dumps({**CHAT, "model": "gpt-9"}).encode()
    elif kind == "path_trick":
        trick = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fbase", "base%00"][i % 4]
        path, payload = f"/v1/models/{trick}", None
    status, headers, _ = server.request("GET" if payload is None else "POST", path, payload, key=key)
    return kind, status, status == 429 and "retry-after" not in {k.lower() for k in headers}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, default_tokenizer):
    path = tmp_path_factory.mktemp("soak") / "base"
    make_tiny_llama(len(default_tokenizer)).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


def soak(root: Path, base: Path, n: int) -> dict:
    """Run the mix of ``n`` requests against a fresh server; the figures the note quotes."""
    server = Server(root, base)
    try:
        for _ in range(20):  # warm-up: first-request allocations are not growth
            server.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        rss_before = server.rss_mb()
        start = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda i: _safe(server, KINDS[i % len(KINDS)], i), range(n)))
        seconds = time.monotonic() - start
        _wait_for(lambda: server.metric("tunesmith_in_flight_requests") == 0)
        burst = _burst(server)
        health = server.request("GET", "/health", key=None)[0]
        good = server.request("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        figures = {
            "requests": n,
            "seconds": round(seconds, 1),
            "by_kind_status": dict(sorted(Counter(f"{k} {s}" for k, s, _ in results).items())),
            "unexpected": sorted({f"{k} {s}" for k, s, _ in results if s not in EXPECTED[k]}),
            "429_without_retry_after": sum(flag for _, _, flag in results + burst),
            "burst": dict(Counter(f"good {s}" for _, s, _ in burst)),
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_after": round(server.rss_mb(), 1),
            "health_after": health,
            "good_request_after": good[0],
            "in_flight_after": server.metric("tunesmith_in_flight_requests"),
        }
    finally:
        server.stop()
    figures["log_has_a_key"] = any(key in server.log.read_text(errors="replace") for key in (KEY, WRONG))
    figures["log_lines"] = len(server.log.read_text(errors="replace").splitlines())
    print("soak figures:", json.dumps(figures))
    return figures


def _burst(server: Server) -> list[tuple[str, int | str, bool]]:
    """:data:`BURST` good requests released at once on a server with :data:`SLOTS` slots."""
    gate = threading.Barrier(BURST)

    def one(i: int) -> tuple[str, int | str, bool]:
        gate.wait(30)
        return _safe(server, "good", i)

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(one, range(BURST)))


def _safe(server: Server, kind: str, i: int) -> tuple[str, int | str, bool]:
    try:
        return _one(server, kind, i)
    except OSError as err:  # refused, reset, timed out: the server let a client down (counted by class)
        return kind, type(err).__name__, False


def _wait_for(predicate) -> None:
    for _ in range(200):  # bounded: 20 s at most
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the server to settle")


def _check(figures: dict, n: int) -> None:
    assert figures["unexpected"] == [], figures
    assert figures["429_without_retry_after"] == 0, figures
    assert figures["burst"].get("good 429", 0) >= 1, figures  # saturated: refused at once, not queued
    assert (figures["health_after"], figures["good_request_after"], figures["in_flight_after"]) == (
        200,
        200,
        0,
    )
    assert figures["rss_mb_after"] - figures["rss_mb_before"] < RSS_BOUND_MB[n], figures
    # The access log has a line per request, and neither the right key nor the wrong one is in it.
    assert figures["log_lines"] >= n and not figures["log_has_a_key"], figures


def test_soak_short(tmp_path, base_dir):
    _check(soak(tmp_path, base_dir, SHORT), SHORT)


@pytest.mark.chaos
def test_soak_long(tmp_path, base_dir):
    _check(soak(tmp_path, base_dir, LONG), LONG)
