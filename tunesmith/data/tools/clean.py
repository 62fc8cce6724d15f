"""Clean training text: HTML remnants, Unicode forms, control characters, whitespace; drop empty/odd rows.

Text cleaning runs on every user-visible text field (see :mod:`~tunesmith.data.tools.textfields`), in this
order: HTML remnants (``<br>`` and block tags become newlines, other known tags go, ``&amp;`` becomes ``&``),
Unicode normalisation (NFC by default; NFKC also folds compatibility forms such as full-width letters and
ligatures), control characters (``\\r\\n`` becomes ``\\n``; NUL, escape codes, zero-width spaces and BOMs go),
whitespace (runs of spaces collapse to one, trailing spaces go, at most one blank line in a row; indentation
and anything inside triple-backtick fences is left alone so code in chat answers survives).

Then each row is checked: missing fields (``drop`` the row, or ``fill`` them by the rule below), empty rows
(nothing to learn from: blank text, blank answer), and character-length bounds. Every change and every drop
is counted by reason.

``--missing fill`` fills by field kind (a field is missing when absent or null; a metadata value also when
``""``, as an empty CSV cell reads):

=====================  ==================================================  =================================
field kind             fields                                              fill
=====================  ==================================================  =================================
context                ``input`` of instruction rows                       ``""`` (no extra context)
prompt                 ``instruction``, ``prompt``; a chat turn's          ``""``
                       ``content`` before the last one
answer                 ``output``, ``completion``, ``text``; the last      never: the row is dropped
                       chat turn's ``content`` (unless it calls a tool)    (``missing_field``): a model
                                                                           must not learn to say nothing
label                  ``label`` of classification rows                    never: the row is dropped
metadata, numbers      any other column whose values are all numbers       the median (lower middle value)
                       (or numeric strings)                                of the present values
metadata, categories   other columns of strings or booleans                the most common value (first
                                                                           seen on ties)
metadata, ids          string columns whose values are all different       never filled (left missing)
metadata, lists/dicts  columns of lists or objects                         ``[]`` / ``{}``
=====================  ==================================================  =================================

The metadata rules need the whole column, so ``fill`` reads the file twice. The fills used are in the report
(``details.fill_rules``)::

    report = clean_file("raw.jsonl", "clean.jsonl", CleanOptions(unicode="NFKC", min_chars=10))
    report["dropped"]   # {"empty": 3, "missing_field": 1, "too_short": 12}
    report["changed"]   # {"html_removed": 40, "whitespace_collapsed": 250, ...}  (rows per reason)
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.data.formats import FORMATS, detect_format, iter_rows
from tunesmith.data.tools.fill import column_fills, fill_row
from tunesmith.data.tools.stream import transform_file
from tunesmith.data.tools.textfields import map_text, text_fields
from tunesmith.errors import DataError

# Text fields each format needs (missing -> the missing-field policy) and may have (filled by ``fill``).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "instruction": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "classification": ("text", "label"),
}
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"instruction": ("input",)}
# The field whose blankness leaves nothing to learn (mirrors what formats.to_example treats as empty).
_ANSWER_FIELD = {
    "instruction": "output",
    "prompt_completion": "completion",
    "text": "text",
    "classification": "text",
}


@dataclass(frozen=True)
class CleanOptions:
    """What :func:`clean_file` does; every step can be switched off."""

    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    """NFC composes accents without changing meaning; NFKC also maps look-alikes (``ﬁ`` -> ``fi``,
    ``²`` -> ``2``)."""
    strip_html: bool = True
    remove_control: bool = True
    collapse_whitespace: bool = True
    drop_empty: bool = True
    min_chars: int | None = None
    """Drop rows whose text fields together have fewer characters (after cleaning)."""
    max_chars: int | None = None
    """Drop rows whose text fields together have more characters (after cleaning)."""
    missing: Literal["drop", "fill"] = "drop"
    """Rows lacking a field: ``drop`` them, or ``fill`` by field kind (the module's table); a missing answer
    or classification label is never filled: such rows are always dropped."""
    format: str = "auto"
    """Row format; ``auto`` takes the first row's format for the whole file."""

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise DataError(f"unknown data format {self.format!r} (known: auto, {', '.join(FORMATS)})")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise DataError(f"min_chars {self.min_chars} is larger than max_chars {self.max_chars}")


# --- text ------------------------------------------------------------------------------------------------

_NEWLINE_TAGS = "br|p|div|li|ul|ol|tr|table|h[1-6]|blockquote|pre|section|article|header|footer|hr"
_DROP_TAGS = (
    "a|b|i|u|s|em|strong|span|font|small|big|sup|sub|code|img|td|th|tbody|thead|abbr|cite|mark|del|ins|"
    "strike|center|tt|q|html|body|head|title|meta|link|nav|main|figure|figcaption|caption|dl|dt|dd|kbd|"
    "var|samp|wbr|iframe|label|form|button|input|select|option|textarea|svg"
)
# Only known HTML tag names: ``List<String>`` or ``a <b> c`` in maths and code are left alone.
_SCRIPT_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_NEWLINE_TAG_RE = re.compile(rf"</?(?:{_NEWLINE_TAGS})\b[^<>]*>", re.IGNORECASE)
_DROP_TAG_RE = re.compile(rf"</?(?:{_DROP_TAGS})\b[^<>]*>", re.IGNORECASE)
# Entities need their semicolon: "?a=1&para=2" in a URL must not become "?a=1¶=2".
_ENTITY_RE = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

_CONTROL_TABLE = {c: None for c in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)]}
_CONTROL_TABLE |= {0x200B: None, 0xFEFF: None, 0x2028: "\n", 0x2029: "\n"}
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\r\u200b\ufeff\u2028\u2029]")

_HSPACE_RE = re.compile(r"[^\S\n]+")
_LEADING_RE = re.compile(r"[^\S\n]*")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def strip_html(text: str) -> str:
    """Strip HTML: known tags (``<br>`` and block tags become newlines), comments, scripts, entities."""
    if "<" in text:
        text = _SCRIPT_RE.sub("", text)
        text = _COMMENT_RE.sub("", text)
        text = _NEWLINE_TAG_RE.sub("\n", text)
        text = _DROP_TAG_RE.sub("", text)
    if "&" in text:
        text = _ENTITY_RE.sub(lambda m: html.unescape(m.group()), text)
    return text


def remove_control(text: str) -> str:
    """Normalise line ends to ``\\n`` and remove control and invisible characters (tabs and newlines stay)."""
    if not _CONTROL_RE.search(text):
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROL_TABLE)


def _collapse_prose(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        indent = _LEADING_RE.match(line).group()  # type: ignore[union-attr]  # always matches
        body = _HSPACE_RE.sub(" ", line[len(indent) :]).rstrip()
        lines.append(indent + body if body else "")
    return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines))


def collapse_whitespace(text: str) -> str:
    """Collapse runs of spaces, drop trailing spaces and extra blank lines; keep indents and code fences."""
    parts = text.split("```")
    # Even parts are prose, odd parts are inside ``` fences (an unclosed fence protects the rest).
    return "```".join(p if i % 2 else _collapse_prose(p) for i, p in enumerate(parts)).strip()


@functools.lru_cache(maxsize=16)
def _text_steps(options: CleanOptions) -> tuple[tuple[str, Callable[[str], str]], ...]:
    steps: list[tuple[str, Callable[[str], str]]] = []
    if options.strip_html:
        steps.append(("html_removed", strip_html))
    if options.unicode != "none":
        steps.append(("unicode_normalized", functools.partial(unicodedata.normalize, options.unicode)))
    if options.remove_control:
        steps.append(("control_chars_removed", remove_control))
    if options.collapse_whitespace:
        steps.append(("whitespace_collapsed", collapse_whitespace))
    return tuple(steps)


def clean_text(text: str, options: CleanOptions = CleanOptions()) -> tuple[str, set[str]]:
    """Clean one string.

    Args:
        text: The text.
        options: Which steps run.

    Returns:
        The cleaned text and the names of the steps that changed it (``html_removed``, ``unicode_normalized``,
        ``control_chars_removed``, ``whitespace_collapsed``).
    """
    changes: set[str] = set()
    for name, fn in _text_steps(options):
        new = fn(text)
        if new != text:
            changes.add(name)
            text = new
    return text, changes


# --- rows ------------------------------------------------------------------------------------------------


def _is_empty(row: dict[str, Any], fmt: str) -> bool:
    """Nothing to learn: no text at all, or a blank answer (a final tool call counts as an answer)."""
    if fmt == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return True
        last = messages[-1]
        return (
            not last.get("tool_calls")
            and not "".join(t for _, t in text_fields({"messages": [last]})).strip()
        )
    value = row.get(_ANSWER_FIELD[fmt])
    return (isinstance(value, str) and not value.strip()) or not any(t.strip() for _, t in text_fields(row))


class _CleanStep:
    """Row step for :func:`transform_file`."""

    def __init__(self, options: CleanOptions, source: Path) -> None:
        self.options = options
        self.source = source
        self.format = None if options.format == "auto" else options.format
        self.fills: dict[str, Any] = {}

    def _fields(self, row: dict[str, Any], line: int) -> tuple[dict[str, Any] | None, list[str]]:
        """Apply the missing-field policy."""
        if self.format is None:
            try:
                self.format = detect_format(row)
            except DataError as err:
                raise DataError(f"{self.source}:{line}: {err}; pass the format explicitly") from None
        fmt = self.format
        missing = [k for k in REQUIRED_FIELDS[fmt] if row.get(k) is None]
        unfillable = {"label", "messages", _ANSWER_FIELD.get(fmt)}
        if self.options.missing == "drop" or unfillable & set(missing):
            return (None, ["missing_field"]) if missing else (row, [])
        return fill_row(row, fmt, self.fills)

    def __call__(self, row: dict[str, Any], line: int) -> tuple[dict[str, Any] | None, list[str]]:
        filled, reasons = self._fields(row, line)
        if filled is None:
            return None, reasons
        changes: set[str] = set()

        def clean(text: str) -> str:
            new, changed = clean_text(text, self.options)
            changes.update(changed)
            return new

        new_row = map_text(filled, clean)
        opts = self.options
        if opts.drop_empty and _is_empty(new_row, self.format or "text"):
            return None, ["empty"]
        size = sum(len(t) for _, t in text_fields(new_row))
        if opts.min_chars is not None and size < opts.min_chars:
            return None, ["too_short"]
        if opts.max_chars is not None and size > opts.max_chars:
            return None, ["too_long"]
        return new_row, reasons + sorted(changes)


def clean_file(
    src: str | Path, dst: str | Path, options: CleanOptions | None = None, *, on_bad_row: str = "stop"
) -> dict[str, Any]:
    """Write a cleaned copy of ``src`` to ``dst`` (JSONL).

    Args:
        src: Input data file (never modified).
        dst: Output JSONL path.
        options: Cleaning options; defaults clean everything with NFC and drop empty rows.
        on_bad_row: ``stop`` at an unreadable row (``path:line``), or ``skip`` and count it (``bad_rows``).

    Returns:
        The :func:`~tunesmith.data.tools.stream.transform_file` report: ``dropped`` counts rows per reason
        (``missing_field``, ``empty``, ``too_short``, ``too_long``), ``changed`` counts kept rows per change
        (``html_removed``, ``unicode_normalized``, ``control_chars_removed``, ``whitespace_collapsed``,
        ``filled_field``); ``details`` holds the options and the format used.

    Raises:
        DataError: unreadable input or row (with ``stop``), ``dst`` equal to ``src``, or a first row of
            unknown format with ``auto``.
    """
    options = options or CleanOptions()
    step = _CleanStep(options, Path(src))
    rules: dict[str, str] = {}
    if options.missing == "fill":
        # A first pass over the column values; unreadable rows are left to the real pass to stop at or count.
        step.fills, rules = column_fills(row for _, row in iter_rows(src, "skip"))

    def details() -> dict[str, Any]:
        found = {
            "format": step.format,
            "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
        }
        return found | ({"fill_rules": rules} if options.missing == "fill" else {})

    return transform_file(src, dst, step, name="clean", details=details, on_bad_row=on_bad_row)
