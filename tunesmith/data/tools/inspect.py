"""Look at a data file before training on it: ``tunesmith data inspect FILE``.

One streaming pass reports what training would see: the format, how many rows are valid, empty or malformed
(each with ``file:line``, listed up to a cap, never stopping at the first), the token length of every example
rendered exactly as training renders it (a histogram against ``max_length`` and how many rows would be
truncated), the label distribution of a classification file, exact duplicates (the dedup module's
normalisation) and one example with its loss mask made visible: text in ``[[...]]`` is trained on::

    report = inspect_file("train.jsonl", tokenizer, max_length=512)
    report["malformed"], report["tokens"]["over_max_length"], report["duplicates"]
    print(format_inspect(report))
    write_text_atomic("inspect.html", inspect_html(report))

Memory is bounded: rows are not kept, only counters (one entry per distinct token length and label) and a
16-byte digest per distinct row for the duplicate count (about 150 bytes each with its dict slot).
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.data.formats import (
    FORMATS,
    KIND_OF_FORMAT,
    SUFFIXES,
    Example,
    _iter_raw,  # the one reader that yields bad rows as values instead of stopping at the first
    detect_format,
    infer_label_names,
    to_example,
)
from tunesmith.data.render import IGNORE_INDEX, render_example
from tunesmith.data.tools.dedup import normalize_for_match, row_digest
from tunesmith.data.tools.diversity import DiversityTally
from tunesmith.data.tools.inspect_preference import (
    format_preference_inspect,
    inspect_preference_file,
    preference_format,
    preference_summary,
)
from tunesmith.data.tools.stream import check_input
from tunesmith.data.tools.textfields import text_fields
from tunesmith.data.tools.token_stats import length_stats, marked_example, mask_segments, shown_lines
from tunesmith.errors import DataError

MAX_LISTED = 20
"""Malformed rows, duplicate pairs and over-long lines listed in a report; the counts are always complete."""
DEFAULT_LABEL_PROMPT: str = DataConfig.model_fields["label_prompt"].default
DEFAULT_MAX_LENGTH: int = DataConfig.model_fields["max_length"].default
_BAR_WIDTH = 40


# --------------------------------------------------------------------------------------------- the stream


class ExampleStream:
    """Stream a file as ``(line, row, example)``, counting malformed and empty rows instead of stopping.

    ``example`` is None for an empty row (nothing to learn). Malformed rows (unparsable, wrong keys or types,
    a format other than the file's) are not yielded; they are counted in ``malformed`` and the first
    ``max_listed`` are kept in ``malformed_rows`` as ``{"line", "error"}``. The format is the first readable
    row's, unless given. An error that makes the rest of the file unreadable (a broken JSON array, bytes that
    are not UTF-8) ends the stream and is kept in ``stopped``.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str = "auto",
        label_names: list[str] | None = None,
        max_listed: int = MAX_LISTED,
    ) -> None:
        self.path = check_input(path)
        if self.path.suffix.lower() not in SUFFIXES:  # fail now, not as a "stopped" note after zero rows
            raise DataError(
                f"{self.path}: unsupported file type {self.path.suffix!r} (supported: {', '.join(SUFFIXES)})"
            )
        if fmt != "auto" and fmt not in FORMATS:
            raise DataError(f"unknown data format {fmt!r} (known: auto, {', '.join(FORMATS)})")
        self.format: str | None = None if fmt == "auto" else fmt
        self.label_names = label_names
        self.max_listed = max_listed
        self.rows = 0
        self.malformed = 0
        self.malformed_rows: list[dict[str, Any]] = []
        self.empty = 0
        self.empty_lines: list[int] = []
        self.stopped: str | None = None

    @property
    def kind(self) -> str | None:
        return KIND_OF_FORMAT[self.format] if self.format else None

    def _bad(self, line: int, error: str) -> None:
        self.malformed += 1
        if len(self.malformed_rows) < self.max_listed:
            self.malformed_rows.append({"line": line, "error": error})

    def _infer_labels(self) -> None:
        """Label names from every row's label (a cheap extra pass holding only the distinct values)."""
        values: set[Any] = set()
        for _, row in _iter_raw(self.path):
            if isinstance(row, dict) and isinstance(row.get("label"), str | int):
                values.add(row["label"])
        self.label_names = infer_label_names(values)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any], Example | None]]:
        try:
            for line, row in _iter_raw(self.path):
                self.rows += 1
                if isinstance(row, DataError):
                    self._bad(line, str(row))
                    continue
                if self.format is None:
                    try:
                        self.format = detect_format(row)
                    except DataError as err:
                        self._bad(line, f"{self.path}:{line}: {err}")
                        continue
                if self.format == "classification" and self.label_names is None:
                    self._infer_labels()
                try:
                    example = to_example(row, self.format, str(self.path), line, self.label_names)
                except DataError as err:
                    self._bad(line, str(err))
                    continue
                if example is None:
                    self.empty += 1
                    if len(self.empty_lines) < self.max_listed:
                        self.empty_lines.append(line)
                yield line, row, example
        except DataError as err:
            # Raised (not yielded) errors mean nothing after this point can be read.
            self.stopped = str(err)

    def summary(self) -> dict[str, Any]:
        """Counts for a report: format, rows, valid, empty, malformed (with the listed lines)."""
        return {
            "input": str(self.path),
            "format": self.format,
            "kind": self.kind,
            "rows": self.rows,
            "valid": self.rows - self.malformed - self.empty,
            "empty": self.empty,
            "malformed": self.malformed,
            "empty_lines": self.empty_lines,
            "malformed_rows": self.malformed_rows,
            "stopped": self.stopped,
        }


# -------------------------------------------------------------------------------------------- statistics


def _row_digest(row: dict[str, Any]) -> bytes:
    return row_digest([normalize_for_match(t) for _, t in text_fields(row)])


class _Tally:
    """What inspect keeps while streaming: counters and capped lists, never rows."""

    def __init__(self, max_length: int, max_listed: int) -> None:
        self.max_length = max_length
        self.max_listed = max_listed
        self.lengths: Counter[int] = Counter()
        self.labels: Counter[str] = Counter()
        self.first_line: dict[bytes, int] = {}
        self.duplicates = 0
        self.duplicate_pairs: list[dict[str, int]] = []
        self.over = 0
        self.over_lines: list[int] = []
        self.no_target = 0
        self.trained_tokens = 0
        self.render_errors = 0
        self.render_error_rows: list[dict[str, Any]] = []
        self.example: dict[str, Any] | None = None

    def duplicate(self, line: int, row: dict[str, Any]) -> None:
        digest = _row_digest(row)
        first = self.first_line.setdefault(digest, line)
        if first != line:
            self.duplicates += 1
            if len(self.duplicate_pairs) < self.max_listed:
                self.duplicate_pairs.append({"line": line, "duplicate_of": first})

    def rendered(self, line: int, ids: list[int], labels: list[int], tokenizer: Any) -> None:
        self.lengths[len(ids)] += 1
        self.trained_tokens += sum(label != IGNORE_INDEX for label in labels)
        if len(ids) > self.max_length:
            self.over += 1
            if len(self.over_lines) < self.max_listed:
                self.over_lines.append(line)
            if all(label == IGNORE_INDEX for label in labels[: self.max_length]):
                self.no_target += 1  # training drops these: the cut removes the whole answer
        if self.example is None:
            segments = mask_segments(tokenizer, ids, labels)
            self.example = {
                "line": line,
                "tokens": len(ids),
                "trained_tokens": sum(label != IGNORE_INDEX for label in labels),
                "segments": [{"trained": t, "text": s} for t, s in segments],
            }

    def render_failed(self, line: int, err: DataError) -> None:
        self.render_errors += 1
        if len(self.render_error_rows) < self.max_listed:
            self.render_error_rows.append({"line": line, "error": str(err)})


# ----------------------------------------------------------------------------------------------- inspect


def inspect_file(
    path: str | Path,
    tokenizer: Any,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    fmt: str = "auto",
    system_prompt: str | None = None,
    label_prompt: str = DEFAULT_LABEL_PROMPT,
    label_names: list[str] | None = None,
    max_listed: int = MAX_LISTED,
) -> dict[str, Any]:
    """Stream ``path`` once and report what training on it would see.

    Args:
        path: Data file in any format :func:`tunesmith.data.formats.iter_rows` reads.
        tokenizer: The model's tokenizer; examples are rendered with :func:`render_example` as in training.
        max_length: Token budget (``data.max_length``); longer examples are counted as truncated.
        fmt: ``auto`` or a format name (as ``data.format``). Preference pairs, unpaired (KTO) rows and RL
            prompts (found by ``auto``, or named by shape or format) are reported by
            :func:`~tunesmith.data.tools.inspect_preference.inspect_preference_file` instead.
        system_prompt: ``data.system_prompt``: added to rows without a system turn.
        label_prompt: ``data.label_prompt`` for classification rows.
        label_names: Classification label names in id order; inferred from the file when None.
        max_listed: How many lines to list per problem.

    Returns:
        ``step`` ("inspect"), ``input``, ``format``, ``kind``, ``rows``, ``valid``, ``empty``,
        ``malformed`` (and ``empty_lines`` / ``malformed_rows`` listings), ``stopped`` (why reading ended
        early, or None), ``duplicates`` and ``duplicate_pairs`` (exact, among valid rows), ``render_errors``,
        ``tokens`` (length stats, ``histogram``, ``over_max_length`` and its lines, ``no_target_after_cut``,
        ``trained``), ``labels`` (name -> count, classification only), ``example`` (one rendered example as
        ``segments`` of ``{"trained", "text"}``) and ``seconds``.

    Raises:
        DataError: the file is missing or of an unsupported type.
    """
    check_input(path)
    if (preference := preference_format(path, fmt)) is not None:
        return inspect_preference_file(
            path,
            tokenizer,
            max_length=max_length,
            fmt=preference,
            system_prompt=system_prompt,
            max_listed=max_listed,
        )
    start = time.perf_counter()
    stream = ExampleStream(path, fmt, label_names, max_listed)
    tally = _Tally(max_length, max_listed)
    diversity = DiversityTally()
    for line, row, example in stream:
        if example is None:
            continue
        tally.duplicate(line, row)
        diversity.add(example)
        if example.kind == "classification" and example.label is not None:
            names = stream.label_names
            tally.labels[names[example.label] if names else str(example.label)] += 1
        try:
            ids, labels = render_example(example, tokenizer, system_prompt, stream.label_names, label_prompt)
        except DataError as err:
            tally.render_failed(line, err)
            continue
        tally.rendered(line, ids, labels, tokenizer)
    tokens = length_stats(tally.lengths, max_length)
    tokens |= {"over_max_length": tally.over, "over_max_length_lines": tally.over_lines}
    tokens |= {"no_target_after_cut": tally.no_target, "trained": tally.trained_tokens}
    return {
        "step": "inspect",
        **stream.summary(),
        "label_names": stream.label_names,
        "duplicates": tally.duplicates,
        "duplicate_pairs": tally.duplicate_pairs,
        "render_errors": tally.render_errors,
        "render_error_rows": tally.render_error_rows,
        "tokens": tokens,
        "labels": dict(tally.labels.most_common()) if stream.kind == "classification" else None,
        "diversity": diversity.report(tally.lengths, dict(tally.labels) or None),
        "example": tally.example,
        "seconds": round(time.perf_counter() - start, 3),
    }


# -------------------------------------------------------------------------------------------------- text


def _histogram_text(tokens: dict[str, Any]) -> list[str]:
    hist = tokens["histogram"]
    edges, counts = hist["edges"], hist["counts"]
    peak = max(counts) or 1
    digits = len(str(edges[-1]))
    out = []
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1] - 1
        bar = "#" * math.ceil(_BAR_WIDTH * count / peak) if count else ""
        mark = f"  <- max_length {tokens['max_length']}" if lo <= tokens["max_length"] <= hi else ""
        out.append(f"    {lo:>{digits}}-{hi:>{digits}} | {bar + ' ' if bar else ''}{count}{mark}")
    return out


def _problem_lines(report: dict[str, Any]) -> list[str]:
    out = [
        f"  rows: {report['rows']} (valid {report['valid']}, empty {report['empty']}, "
        f"malformed {report['malformed']})"
    ]
    if report["stopped"]:
        out.append(f"  reading stopped early: {report['stopped']}")
    if report["malformed"]:
        out.append(f"  malformed rows ({report['malformed']}):")
        out += [f"    {r['error']}" for r in report["malformed_rows"]]
        if report["malformed"] > len(report["malformed_rows"]):
            out.append(f"    ... {report['malformed'] - len(report['malformed_rows'])} more")
    if report["empty"]:
        out.append(
            f"  empty rows (dropped by training): lines {shown_lines(report['empty_lines'], report['empty'])}"
        )
    if report["render_errors"]:
        out.append(f"  rows the chat template cannot render ({report['render_errors']}):")
        out += [f"    {r['error']}" for r in report["render_error_rows"][:5]]
    dup = report["duplicates"]
    pairs = ", ".join(f"{p['line']} repeats {p['duplicate_of']}" for p in report["duplicate_pairs"][:5])
    out.append(f"  exact duplicates: {dup}" + (f" (line {pairs}{', ...' if dup > 5 else ''})" if dup else ""))
    return out


def _diversity_lines(div: dict[str, Any]) -> list[str]:
    if not div["sampled_rows"]:
        return []
    openings = ", ".join(f'"{o["opening"]}" {100 * o["share"]:.0f}%' for o in div["top_openings"])
    out = [
        f"  diversity (first {div['sampled_rows']} rows): near-duplicates "
        f"{100 * div['near_duplicate_share']:.1f}%, answer distinct-1 {div['distinct_1']:.2f} / distinct-2 "
        f"{div['distinct_2']:.2f}; prompts open with {openings or '-'}"
    ]
    if "length_spread" in div:
        spread = div["length_spread"]
        out.append(
            f"  length spread: p10 {spread['p10']:g} - p90 {spread['p90']:g} tokens, cv {spread['cv']:.2f}, "
            f"longest {spread['max_over_p50']:g}x the median"
        )
    if "label_balance" in div:
        bal = div["label_balance"]
        out.append(
            f"  label balance: largest/smallest {bal['imbalance_ratio']:g}, "
            f"evenness {bal['entropy']:.2f} (1 = even)"
        )
    out += [f"  warning: {w}" for w in div["warnings"]]
    return out


def format_inspect(report: dict[str, Any], color: bool = False) -> str:
    """The inspect report as text for a terminal.

    Args:
        report: What :func:`inspect_file` returned.
        color: Show trained text in green (ANSI) instead of ``[[...]]``; only for a terminal.
    """
    if "shape" in report:
        return format_preference_inspect(report, color)
    out = [f"{report['input']}: {report['format'] or 'unknown'} format"]
    out += _problem_lines(report)
    tokens = report["tokens"]
    if tokens["examples"]:
        out.append(
            f"  tokens per example: min {tokens['min']}, mean {tokens['mean']}, p50 {tokens['p50']}, "
            f"p90 {tokens['p90']}, p99 {tokens['p99']}, max {tokens['max']}; {tokens['trained']} of "
            f"{tokens['total']} tokens trained on (before truncation)"
        )
        over = tokens["over_max_length"]
        line = f"  over max_length {tokens['max_length']}: {over} would be truncated"
        if over:
            line += f" (lines {shown_lines(tokens['over_max_length_lines'], over)})"
        if tokens["no_target_after_cut"]:
            line += f"; {tokens['no_target_after_cut']} would lose their whole answer and be dropped"
        out += [line, "  token lengths:", *_histogram_text(tokens)]
    if report["labels"] is not None:
        total = sum(report["labels"].values()) or 1
        shares = ", ".join(f"{k}={v} ({100 * v / total:.1f}%)" for k, v in report["labels"].items())
        out.append(f"  labels: {shares}")
    out += _diversity_lines(report["diversity"])
    example = report["example"]
    if example is not None:
        legend = "green" if color else "[[...]]"
        out.append(
            f"  example (line {example['line']}; {example['tokens']} tokens, {example['trained_tokens']} "
            f"trained; {legend} = in the loss):"
        )
        out.append(marked_example(example, color))
    return "\n".join(out)


# -------------------------------------------------------------------------------------------------- html


def length_histogram_png(tokens: dict[str, Any]) -> bytes:
    """The token-length histogram with a line at ``max_length``, as PNG bytes (Agg, no pyplot)."""
    # deferred: matplotlib loads only for the HTML page's histogram
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # deferred: matplotlib only for the plot

    hist = tokens["histogram"]
    fig = Figure(figsize=(8, 3.6))
    FigureCanvasAgg(fig)  # a canvas bound to this figure only; pyplot's global state is never touched
    ax = fig.add_subplot()
    ax.bar(
        hist["edges"][:-1],
        hist["counts"],
        width=hist["bin_width"],
        align="edge",
        color="#1f77b4",
        edgecolor="white",
    )
    ax.axvline(
        tokens["max_length"], color="#d62728", linestyle="--", label=f"max_length {tokens['max_length']}"
    )
    ax.set_xlabel("tokens per example (rendered as in training)")
    ax.set_ylabel("examples")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
    "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}mark{background:#c8f0c8}"
)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def inspect_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page for an inspect report (the histogram is an embedded base64 PNG)."""
    esc = html.escape
    tokens = report["tokens"]
    parts = [f"<h1>Data inspection: {esc(report['input'])}</h1>"]
    if "shape" in report:
        return _page(report, [*parts, _table(preference_summary(report)), *_preference_html(report)])
    summary = [(k, report[k]) for k in ("format", "rows", "valid", "empty", "malformed", "duplicates")]
    if tokens["examples"]:
        summary += [(k, tokens[k]) for k in ("max_length", "min", "mean", "p50", "p90", "p99", "max")]
        summary += [("over max_length (truncated)", tokens["over_max_length"])]
        summary += [("answer lost to the cut (dropped)", tokens["no_target_after_cut"])]
    parts.append(_table(summary))
    if report["malformed_rows"]:
        parts.append("<h2>Malformed rows</h2><ul>")
        parts += [f"<li>{esc(r['error'])}</li>" for r in report["malformed_rows"]]
        parts.append("</ul>")
    if tokens["examples"]:
        png = base64.b64encode(length_histogram_png(tokens)).decode("ascii")
        parts.append(
            f'<h2>Token lengths</h2><img alt="token length histogram" src="data:image/png;base64,{png}">'
        )
    if report["labels"]:
        parts.append("<h2>Labels</h2>" + _table(list(report["labels"].items())))
    div = report["diversity"]
    if div["sampled_rows"]:
        shown = {k: v for k, v in div.items() if k not in ("warnings", "top_openings")}
        parts.append("<h2>Diversity</h2>" + _table([(k, v) for k, v in shown.items()]))
        parts += [f"<p><b>Warning:</b> {esc(w)}</p>" for w in div["warnings"]]
    example = report["example"]
    if example is not None:
        parts.append(_example_html(f"Example (line {example['line']})", example))
    return _page(report, parts)


def _example_html(title: str, example: dict[str, Any]) -> str:
    esc = html.escape
    text = "".join(
        f"<mark>{esc(s['text'])}</mark>" if s["trained"] else esc(s["text"]) for s in example["segments"]
    )
    return (
        f"<h2>{esc(title)}</h2><p>Highlighted text is in the loss "
        f"({example['trained_tokens']} of {example['tokens']} tokens).</p><pre>{text}</pre>"
    )


def _preference_html(report: dict[str, Any]) -> list[str]:
    """Malformed rows and the example's sequences (chosen and rejected, or completion, or prompt)."""
    parts = (
        [f"<h2>Malformed rows</h2><ul>{_items(report['malformed_rows'])}</ul>"] if report["malformed"] else []
    )
    if (example := report["example"]) is not None:
        parts += [
            _example_html(f"{name} (line {example['line']})", seq)
            for name, seq in example["sequences"].items()
        ]
    return parts


def _items(rows: list[dict[str, Any]]) -> str:
    return "".join(f"<li>{html.escape(r['error'])}</li>" for r in rows)


def _page(report: dict[str, Any], parts: list[str]) -> str:
    esc = html.escape
    title = f"tunesmith data inspect: {esc(Path(report['input']).name)}"
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
