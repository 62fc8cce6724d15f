"""Child process of the ``python`` grader: runs a user's ``grade(sample, item)`` over one batch.

Started by :mod:`tunesmith.evaluate.python_grader` as ``python -I <this file>`` with the request file on
stdin; uses the standard library only, so it starts in tens of milliseconds and never imports tunesmith.

Protocol (one JSON object per line on the *original* stdout; the user's own prints go to stderr):

* stdin: ``{"source": str, "samples": [{"output_text": str}, ...], "items": [dict, ...],
  "memory_mb": int | null}`` (the address-space limit set before the source runs)
* first line: ``{"ready": true}`` once the source has run, or ``{"fatal": "<reason>"}`` if it failed;
* then one line per sample, in order: ``{"score": float}`` or ``{"error": "<Type>: <message> (line N)"}``.

Timeouts are the parent's job (it kills this process when a line is late), so nothing here needs signals
and the same code runs on every OS.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import socket
import sys
import traceback
from typing import Any, TextIO

SOURCE_NAME = "<grader>"


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise OSError("network disabled in python graders")


class _NoNetworkSocket(socket.socket):
    """A ``socket.socket`` that refuses to be created; a subclass, so ``ssl`` and friends still import."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _no_network()


def disable_network() -> None:
    """Make new sockets, connections and DNS look-ups raise ``OSError("network disabled ...")``.

    A guard against accidents (a grader that calls an API, a library that phones home), NOT a security
    sandbox: ``_socket``, ``ctypes`` or a subprocess get around it in one line.
    """
    socket.socket = _NoNetworkSocket  # type: ignore[misc]
    socket.create_connection = _no_network
    socket.getaddrinfo = _no_network
    socket.socketpair = _no_network


def describe(exc: BaseException) -> str:
    """``"ZeroDivisionError: division by zero (line 3)"``: the type, the message and the user's line."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == SOURCE_NAME]
    if isinstance(exc, SyntaxError) and exc.filename == SOURCE_NAME:
        lines.append(exc.lineno or 0)
    where = f" (line {lines[-1]})" if lines else ""
    return f"{type(exc).__name__}: {exc}{where}"


def grade_one(grade: Any, sample: dict, item: dict) -> dict[str, Any]:
    """Call ``grade`` on one sample; every failure of the user's code becomes ``{"error": ...}``."""
    try:
        value = grade(sample, item)
    except BaseException as exc:  # SystemExit / KeyboardInterrupt from user code fail that sample only
        return {"error": describe(exc)}
    if not isinstance(value, numbers.Real):
        return {"error": f"grade() returned {type(value).__name__} {value!r:.80}, not a number"}
    if not math.isfinite(value):
        return {"error": f"grade() returned {value}, not a finite number"}
    return {"score": float(value)}


def _send(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()  # the parent's per-sample deadline starts when this line arrives


def limit_memory(memory_mb: int | None) -> None:
    """Cap this process's address space at ``memory_mb`` MiB (POSIX ``RLIMIT_AS``; elsewhere a no-op), so a
    runaway grader gets ``MemoryError`` instead of taking the machine's memory from the training run."""
    if memory_mb is None:
        return
    try:
        import resource  # POSIX only
    except ImportError:
        return
    limit = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main() -> None:
    request = json.load(sys.stdin)
    limit_memory(request.get("memory_mb"))
    # Keep the protocol channel to ourselves: fd 1 now points at stderr, so a print() in the user's code
    # (or a C library writing to fd 1) cannot corrupt the result lines.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    disable_network()
    namespace: dict[str, Any] = {"__name__": "__grader__"}
    try:
        exec(compile(request["source"], SOURCE_NAME, "exec"), namespace)
        grade = namespace["grade"]
    except BaseException as exc:
        _send(out, {"fatal": f"running the grader source failed: {describe(exc)}"})
        return
    _send(out, {"ready": True})
    for sample, item in zip(request["samples"], request["items"], strict=True):
        _send(out, grade_one(grade, sample, item))


if __name__ == "__main__":
    main()
