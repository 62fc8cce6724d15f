"""Run a user's ``grade(sample, item) -> float`` over a batch in a separate Python process.

One process per batch (not per sample): starting Python costs ~50 ms, a GRPO step grades tens of
completions. The child (:mod:`tunesmith.evaluate._grader_runner`) runs with ``python -I`` (no user site,
no ``PYTHON*`` variables, the working directory not on ``sys.path``) and with networking disabled — a guard
against accidents, not a security sandbox: only run grader code you would run yourself.

Timeout semantics: ``timeout_s`` is a deadline *per sample*. The parent watches the child's result lines;
when the next line is more than ``timeout_s`` late it kills the child, scores that one sample 0 with
``"timeout after Xs"`` and starts a fresh child for the samples after it. So one runaway completion (an
endless loop, a catastrophic regex that no signal can interrupt) costs its own ``timeout_s`` and one process
start, and the rest of the batch is still graded. Starting the child and running the source's top level
(imports) get :data:`STARTUP_S` on top of ``timeout_s``.

Never raises for problems in the user's code: exceptions, non-numeric returns, timeouts and a crashed
process all come back as ``(0.0, reason)``.

Memory: the child's address space is capped at ``memory_mb`` (``RLIMIT_AS``, POSIX); a grader that
allocates past it gets ``MemoryError`` in its own code, which scores that sample 0 like any exception.
"""

from __future__ import annotations

import ast
import json
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from tunesmith.errors import ConfigError

RUNNER = Path(__file__).with_name("_grader_runner.py")
STARTUP_S = 30.0
"""Allowance for starting the child and running the source's top level (a cold ``import numpy`` on a busy
machine takes seconds); only paid in full when the child hangs before grading anything."""

Result = tuple[float, str | None]
"""``(score, None)`` or ``(0.0, reason)``."""

DEFAULT_MEMORY_MB = 2048
"""The child's address-space limit unless the grader sets ``memory_mb``: room for numpy and friends (whose
thread pools reserve address space), not for a runaway list."""

_EOF = object()


def check_source(source: str, name: str) -> None:
    """Fail fast, without running it, when ``source`` does not parse or defines no top-level ``grade``.

    Raises:
        ConfigError: The source has a syntax error or no ``grade`` function / assignment.
    """
    try:
        tree = ast.parse(source, filename="<grader>")
    except SyntaxError as exc:
        raise ConfigError(
            f"python grader {name!r}: source does not compile: {exc.msg} (line {exc.lineno}); "
            "fix the grader's source"
        ) from exc
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        defined.update(t.id for t in targets if isinstance(t, ast.Name))
        if isinstance(node, ast.ImportFrom):
            defined.update(alias.asname or alias.name for alias in node.names)
    if "grade" not in defined:
        raise ConfigError(
            f"python grader {name!r}: source defines no top-level `grade`; "
            "add `def grade(sample: dict, item: dict) -> float:`"
        )


def run_python_grader(
    source: str,
    completions: list[str],
    items: list[dict[str, Any]],
    timeout_s: float,
    memory_mb: int | None = DEFAULT_MEMORY_MB,
) -> list[Result]:
    """Score each completion with ``grade({"output_text": completion}, item)`` from ``source``.

    Args:
        source: Python source defining ``grade(sample, item)``.
        completions: The texts graded, one per item.
        items: The data rows (JSON-serialisable; other values are sent as ``str()``).
        timeout_s: Deadline per sample, in seconds (see the module docstring).
        memory_mb: Address-space limit of the child (``RLIMIT_AS``, POSIX); None: no limit.

    Returns:
        One ``(score, error)`` per completion, in order; ``error`` is None when ``grade`` returned a
        finite number.
    """
    results: list[Result] = []
    while len(results) < len(completions):
        # Each child grades at least one sample (or fails all the rest), so this loop always ends.
        start = len(results)
        results.extend(_run_child(source, completions[start:], items[start:], timeout_s, memory_mb))
    return results


def _run_child(
    source: str, completions: list[str], items: list[dict[str, Any]], timeout_s: float, memory_mb: int | None
) -> list[Result]:
    """One child process over the batch; returns the results up to the first timeout or crash."""
    request = {
        "source": source,
        "samples": [{"output_text": c} for c in completions],
        "items": items,
        "memory_mb": memory_mb,
    }
    with tempfile.TemporaryDirectory(prefix="tunesmith-grader-") as tmp:
        # The request goes through a file, not a pipe: no deadlock however large the batch, no writer thread.
        request_path, log_path = Path(tmp) / "request.json", Path(tmp) / "stderr.txt"
        request_path.write_text(json.dumps(request, default=str), encoding="utf-8")
        with request_path.open("rb") as stdin, log_path.open("wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-I", str(RUNNER)], stdin=stdin, stdout=subprocess.PIPE, stderr=stderr
            )
            try:
                return _collect(child, len(completions), timeout_s, log_path)
            finally:
                child.kill()  # no-op when it has exited; reclaims a hung one
                child.wait()
                child.stdout.close()  # type: ignore[union-attr]


def _collect(child: subprocess.Popen, n: int, timeout_s: float, log_path: Path) -> list[Result]:
    lines = _line_queue(child.stdout)  # type: ignore[arg-type]
    first = _receive(lines, STARTUP_S + timeout_s)
    if first is None:
        return [(0.0, f"timeout after {STARTUP_S + timeout_s:g}s starting the grader (its top level)")] * n
    if first is _EOF:
        return [(0.0, _crash_reason(child, log_path))] * n
    if "fatal" in first:
        return [(0.0, str(first["fatal"]))] * n
    results: list[Result] = []
    while len(results) < n:
        message = _receive(lines, timeout_s)
        if message is None:
            return [*results, (0.0, f"timeout after {timeout_s:g}s")]
        if message is _EOF:
            return [*results, (0.0, _crash_reason(child, log_path))]
        results.append(
            (float(message["score"]), None) if "score" in message else (0.0, str(message["error"]))
        )
    return results


def _line_queue(stream: IO[bytes]) -> queue.Queue:
    """Lines of ``stream`` on a queue, read by a daemon thread, so the parent can wait with a timeout on
    any OS (``select`` on pipes is POSIX-only)."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(_EOF)

    threading.Thread(target=pump, name="python-grader-reader", daemon=True).start()
    return lines


def _receive(lines: queue.Queue, timeout_s: float) -> Any:
    """The next decoded message, ``_EOF`` when the child closed its output, None after ``timeout_s``."""
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        return None
    if line is _EOF:
        return _EOF
    try:
        return json.loads(line)
    except ValueError:
        return {"error": f"grader process wrote an unreadable result line: {line[:80]!r}"}


def _crash_reason(child: subprocess.Popen, log_path: Path) -> str:
    try:
        code: int | None = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    detail = f": {' | '.join(tail)}" if tail else ""
    return f"grader process exited (code {code}) before finishing{detail}"
