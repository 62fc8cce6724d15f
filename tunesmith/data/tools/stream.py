"""Streaming, atomic, non-destructive file steps: read rows one at a time, write the kept ones, count why.

Every data tool is a *step*: a function that sees one row and returns the row to write (possibly changed) or
``None`` to drop it, plus the reasons (``"html_removed"``, ``"exact_duplicate"``...). :func:`transform_file`
runs a step over a file with bounded memory (one row in flight; nothing is collected) and writes through
:class:`AtomicJSONLWriter`, so a crash or Ctrl-C leaves either the old output or the complete new one::

    report = transform_file("raw.jsonl", "clean.jsonl", step, name="clean")
    report["rows_in"], report["rows_out"], report["dropped"], report["changed"]

The input file is never modified and an output path equal to an input path is refused. A row that cannot be
read stops the step with ``path:line: ...`` (``on_bad_row="stop"``, the default) or is skipped and counted
under ``bad_rows`` in the report (``on_bad_row="skip"``), like ``data.on_bad_row`` in the training loaders.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tunesmith.data.formats import check_on_bad_row, iter_rows
from tunesmith.errors import DataError
from tunesmith.io import write_json_atomic

# A step sees (row, 1-based line) and returns (row to write or None to drop, reasons to count).
StepFn = Callable[[dict[str, Any], int], tuple[dict[str, Any] | None, Sequence[str]]]

MAX_EXAMPLE_LINES = 5
"""Line numbers kept per reason in a report: enough to find examples, bounded for huge files."""

MAX_BAD_ROWS_LISTED = 20
"""Skipped unreadable rows listed (with ``path:line``) in a report; the count is always complete."""

_WRITE_BUFFER = 1 << 20  # 1 MiB: fewer syscalls when writing millions of short lines.


class AtomicJSONLWriter:
    """Write JSON rows to a temporary sibling of ``path``; rename over ``path`` only on a clean exit.

    Use as a context manager. An exception inside the block deletes the temporary file and leaves any
    existing ``path`` untouched.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = 0
        self._tmp: Path | None = None
        self._fh: Any = None

    def __enter__(self) -> AtomicJSONLWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", encoding="utf-8", buffering=_WRITE_BUFFER)
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Append one row as a JSON line (non-ASCII kept readable)."""
        self._fh.write(json.dumps(row, ensure_ascii=False))
        self._fh.write("\n")
        self.rows += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tmp is not None
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())  # the rename must not outrun the data on a power cut
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_outputs(inputs: Iterable[str | Path], outputs: Iterable[str | Path]) -> None:
    """Refuse to run a step whose output would overwrite one of its inputs (inputs are never modified).

    Raises:
        DataError: an output path names the same file as an input path, or two outputs are the same.
    """
    ins = [Path(p) for p in inputs]
    outs = [Path(p) for p in outputs]
    for out in outs:
        for src in ins:
            if _same_file(src, out):
                raise DataError(
                    f"output {out} is the input file {src}; tools never modify their input — "
                    "choose a new output path (e.g. add a .clean.jsonl suffix)"
                )
    resolved = [p.resolve() for p in outs]
    if len(set(resolved)) != len(resolved):
        raise DataError(f"two outputs name the same file: {[str(p) for p in outs]}; give each its own path")


def check_input(path: str | Path) -> Path:
    """Return ``path`` as a Path after checking it is an existing file.

    Raises:
        DataError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist; check the path")
    return path


class ReasonLog:
    """Counts reasons and remembers the first few line numbers of each, for a report a person can follow."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[int]] = {}

    def add(self, reason: str, line: int) -> None:
        self.counts[reason] += 1
        lines = self.examples.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES and (not lines or lines[-1] != line):
            lines.append(line)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class BadRows:
    """Rows a step skipped because they could not be read (``on_bad_row="skip"``), with ``path:line`` of each.

    Pass :meth:`add` as ``iter_rows(..., skipped=...)``; :meth:`as_dict` is the report's ``bad_rows`` entry.
    """

    def __init__(self, on_bad_row: str = "stop") -> None:
        self.on_bad_row = check_on_bad_row(on_bad_row)
        self.skipped = 0
        self.examples: list[str] = []

    def add(self, err: DataError) -> None:
        self.skipped += 1
        if len(self.examples) < MAX_BAD_ROWS_LISTED:
            self.examples.append(str(err))

    def rows(self, path: str | Path, count: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
        """``iter_rows(path)`` under this policy; ``count=False`` for a second pass over the same file."""
        return iter_rows(path, self.on_bad_row, self.add if count else None)

    def as_dict(self) -> dict[str, Any]:
        """``{"on_bad_row", "skipped", "examples"}``; each example is ``path:line: what is wrong``."""
        return {"on_bad_row": self.on_bad_row, "skipped": self.skipped, "examples": list(self.examples)}


def transform_file(
    src: str | Path,
    dst: str | Path,
    step_fn: StepFn,
    *,
    name: str = "step",
    details: Callable[[], dict[str, Any]] | None = None,
    on_bad_row: str = "stop",
    bad_rows: BadRows | None = None,
) -> dict[str, Any]:
    """Stream ``src`` through ``step_fn`` and write the kept rows to ``dst`` as JSONL, atomically.

    Args:
        src: Input file in any format ``iter_rows`` reads (JSONL, CSV, Parquet, txt). Never modified.
        dst: Output JSONL path; must differ from ``src``. Written only if the whole pass succeeds.
        step_fn: ``(row, line) -> (row or None, reasons)``. Reasons of dropped rows are counted under
            ``dropped``, those of kept rows under ``changed``.
        name: Step name recorded in the report.
        details: Called after the pass; its dict is added to the report under ``details``.
        on_bad_row: ``stop`` at the first unreadable row, or ``skip`` it and count it under ``bad_rows``.
        bad_rows: Where skipped rows are counted, when the step already counted some (e.g. in other files
            it read); overrides ``on_bad_row``.

    Returns:
        The report: ``step``, ``input``, ``output``, ``rows_in`` (rows read), ``rows_out``, ``rows_dropped``,
        ``dropped`` and ``changed`` (counts per reason), ``example_lines`` (first lines per reason),
        ``bad_rows`` (see :class:`BadRows`) and ``seconds``.

    Raises:
        DataError: ``src`` is missing or unreadable, ``dst`` names the input file, or (with ``stop``) a row
            cannot be read.
    """
    src = check_input(src)
    dst = Path(dst)
    check_outputs([src], [dst])
    bad_rows = bad_rows or BadRows(on_bad_row)
    dropped, changed = ReasonLog(), ReasonLog()
    rows_in = 0
    start = time.perf_counter()
    with AtomicJSONLWriter(dst) as out:
        for line, row in bad_rows.rows(src):
            rows_in += 1
            new_row, reasons = step_fn(row, line)
            log = dropped if new_row is None else changed
            for reason in reasons:
                log.add(reason, line)
            if new_row is not None:
                out.write(new_row)
    report: dict[str, Any] = {
        "step": name,
        "input": str(src),
        "output": str(dst),
        "rows_in": rows_in,
        "rows_out": out.rows,
        "rows_dropped": rows_in - out.rows,
        "dropped": dropped.as_dict(),
        "changed": changed.as_dict(),
        "example_lines": {**dropped.examples, **changed.examples},
        "bad_rows": bad_rows.as_dict(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if details is not None:
        report["details"] = details()
    return report


def add_report_entry(report_path: str | Path, entry: dict[str, Any]) -> None:
    """Append one step report to a JSON report file (``{"steps": [...]}``), rewriting it atomically.

    Raises:
        DataError: the existing report file is not a tunesmith data report.
    """
    report_path = Path(report_path)
    doc: dict[str, Any] = {"steps": []}
    if report_path.exists():
        try:
            doc = json.loads(report_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(
                f"{report_path} is not valid JSON ({err}); move it away or pick another path"
            ) from err
        if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
            raise DataError(f"{report_path} is not a data report (no 'steps' list); pick another path")
    doc["steps"].append(entry)
    write_json_atomic(report_path, doc)
