"""Read training files and validate each row into an :class:`Example`.

Files are JSON lines (``.jsonl``, or ``.json`` holding JSON lines or one array), CSV with a header, Parquet,
or plain ``.txt`` (one ``text`` per line). Five row formats are recognised by their keys::

    chat               {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
    instruction        {"instruction": ..., "input": ... (optional), "output": ...}
    prompt_completion  {"prompt": ..., "completion": ...}
    classification     {"text": ..., "label": 2 | "joy"}
    text               {"text": ...}

Chat rows follow the OpenAI fine-tuning files as they are (``tools``, ``tool_calls``, ``weight``, ``name``).
Every problem is a :class:`DataError` starting with ``path:line:`` so the user can jump to the row::

    examples, counts = read_examples("train.jsonl")
    # counts: rows_read, malformed_skipped, empty_dropped, kept

Prediction inputs, which may be questions without answers, are read by :mod:`tunesmith.data.prompts`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError

FORMATS = ("chat", "instruction", "prompt_completion", "text", "classification")
KIND_OF_FORMAT = {
    "chat": "chat",
    "instruction": "chat",
    "prompt_completion": "chat",
    "text": "text",
    "classification": "classification",
}
"""instruction and prompt_completion rows become two-turn chats, so the whole pipeline sees three kinds."""
ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
_EXPECTED_KEYS = (
    "messages (chat), instruction+output (instruction), prompt+completion (prompt_completion), "
    "text+label (classification), text (text)"
)


@dataclass
class Example:
    """One validated training example; ``source:line`` points back at the row it came from."""

    source: str
    line: int
    kind: str
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    label: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Preference / unpaired rows (data/preference_formats.py): messages is the prompt, chosen the preferred
    # (or unpaired) reply; desirable is the KTO label.
    chosen: list[dict[str, Any]] | None = None
    rejected: list[dict[str, Any]] | None = None
    desirable: bool | None = None


@dataclass
class SourceData:
    """What :func:`read_source` found in one file: the examples plus what it decided along the way."""

    examples: list[Example]
    counts: dict[str, int]
    format: str
    label_names: list[str] | None


class _RowError(ValueError):
    """A problem with one row; :func:`to_example` prefixes it with ``path:line:``."""


def _json_problem(err: ValueError | RecursionError) -> str:
    """What json.loads objected to: a syntax error with its column, an integer too long to convert (Python's
    4300-digit limit, a ValueError) or nesting too deep for the parser (a RecursionError)."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} (column {err.colno})"
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------- reading rows


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, text in enumerate(fh, 1):
            if not text.strip():  # blank lines (often a trailing one) are not rows
                continue
            try:
                row = json.loads(text)
            except (ValueError, RecursionError) as err:
                yield lineno, DataError(f"{path}:{lineno}: invalid JSON: {_json_problem(err)}")
                continue
            if not isinstance(row, dict):
                yield lineno, DataError(f"{path}:{lineno}: expected a JSON object, got {_json_type(row)}")
                continue
            yield lineno, row


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, dict | DataError]]:
    """Walk a top-level JSON array item by item so each row keeps the editor line it starts on."""
    decoder = json.JSONDecoder()

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def invalid(pos: int, msg: str) -> DataError:
        line = text.count("\n", 0, pos) + 1
        return DataError(f"{path}:{line}: invalid JSON: {msg}")

    pos = skip_ws(text.index("[") + 1)
    if text.startswith("]", pos):
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as err:
            # One broken item breaks the rest of the array, so this stops even with on_bad_row=skip.
            raise invalid(getattr(err, "pos", pos), _json_problem(err)) from None
        if isinstance(row, dict):
            yield line, row
        else:
            yield line, DataError(f"{path}:{line}: expected a JSON object, got {_json_type(row)}")
        pos = skip_ws(pos)
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            raise invalid(pos, "expected ',' or ']' between array items")
        pos = skip_ws(pos + 1)


def _iter_json(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        yield from _iter_json_array(path, text)
    else:
        yield from _iter_jsonl(path)


def _iter_csv(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames
            if header is None:
                return
            previous_end = reader.line_num
            for record in reader:
                # Quoted fields may span lines: the row starts right after the previous row ended.
                line, previous_end = previous_end + 1, reader.line_num
                if None in record:
                    yield (
                        line,
                        DataError(f"{path}:{line}: row has more fields than the header ({len(header)})"),
                    )
                elif any(value is None for value in record.values()):
                    yield (
                        line,
                        DataError(f"{path}:{line}: row has fewer fields than the header ({len(header)})"),
                    )
                else:
                    yield line, dict(record)
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: unreadable CSV: {err}") from None


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    import pyarrow as pa  # deferred: pyarrow loads only for Parquet files
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file: {err}") from None
    number = 0
    try:
        # Row-group batches keep memory bounded on large files; rows are numbered from 1.
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as err:  # a damaged row group after a readable footer
        raise DataError(f"{path}: row {number + 1}: unreadable Parquet data: {err}") from None


def _iter_txt(path: Path) -> Iterator[tuple[int, dict | DataError]]:
    labels = _paired_labels(path)
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, text in enumerate(fh, 1):
            row: dict[str, Any] = {"text": text.rstrip("\r\n")}
            if labels is not None:
                label = labels[lineno - 1]
                row["label"] = int(label) if label.isdecimal() else label  # "²".isdigit(), int() refuses it
            yield lineno, row


def _paired_labels(path: Path) -> list[str] | None:
    """TweetEval-style pairs: ``X_text.txt`` with ``X_labels.txt`` beside it (one label per line) are read as
    classification rows; label names come from ``data.labels`` (TweetEval's mapping.txt lists them)."""
    if not path.name.endswith("_text.txt"):
        return None
    label_file = path.with_name(path.name[: -len("_text.txt")] + "_labels.txt")
    if not label_file.exists():
        return None
    labels = [x.strip() for x in label_file.read_text(encoding="utf-8-sig").splitlines()]
    with open(path, encoding="utf-8-sig") as fh:
        n_texts = sum(1 for _ in fh)
    if len(labels) != n_texts:
        raise DataError(f"{label_file} has {len(labels)} lines but {path} has {n_texts}; pair them 1:1")
    return labels


_READERS: dict[str, Callable[[Path], Iterator[tuple[int, dict | DataError]]]] = {
    ".jsonl": _iter_jsonl,
    ".json": _iter_json,
    ".csv": _iter_csv,
    ".parquet": _iter_parquet,
    ".txt": _iter_txt,
}


def _iter_raw(path: str | Path) -> Iterator[tuple[int, dict | DataError]]:
    """Yield ``(line, row)``; a row that cannot be parsed comes as a DataError so callers may skip it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(SUFFIXES)})")
    try:
        yield from reader(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8"
        ) from None


ON_BAD_ROW = ("stop", "skip")  # a row that cannot be read: stop with path:line, or skip and count it


def check_on_bad_row(on_bad_row: str) -> str:
    """Return ``on_bad_row`` if it is one of :data:`ON_BAD_ROW`; raise DataError otherwise."""
    if on_bad_row not in ON_BAD_ROW:
        raise DataError(f"on_bad_row must be 'stop' or 'skip', got {on_bad_row!r}")
    return on_bad_row


def iter_rows(
    path: str | Path,
    on_bad_row: str = "stop",
    skipped: Callable[[DataError], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """Stream ``(line, row)`` pairs from a data file.

    Args:
        path: A ``.jsonl``/``.json`` (JSON lines or one array), ``.csv`` (with header), ``.parquet``
            or ``.txt`` file (each line becomes ``{"text": line}``).
        on_bad_row: ``stop`` raises on the first row that cannot be parsed; ``skip`` passes over it.
        skipped: With ``skip``, called with each skipped row's error (``path:line: ...``) so it is counted.

    Yields:
        The 1-based line the row starts on (CSV counts the header, Parquet numbers rows) and the row.

    Raises:
        DataError: Missing file, unknown type, or (with ``stop``) a row that cannot be parsed
            (``path:line: ...``). A broken JSON array stops even with ``skip``: the rest cannot be found.
    """
    check_on_bad_row(on_bad_row)
    for line, row in _iter_raw(path):
        if isinstance(row, DataError):
            if on_bad_row == "stop":
                raise row
            if skipped is not None:
                skipped(row)
            continue
        yield line, row


# ------------------------------------------------------------------------------------------ row validation


def detect_format(row: dict) -> str:
    """Name the row format from the keys present (keys holding null do not count).

    Raises:
        DataError: The keys match no format; the message lists the keys seen and those expected.
    """
    keys = {key for key, value in row.items() if value is not None}
    if "messages" in keys:
        return "chat"
    if {"instruction", "output"} <= keys:
        return "instruction"
    if {"prompt", "completion"} <= keys:
        if isinstance(row.get("label"), bool):  # else SFT would train on the undesirable completions too
            raise DataError(
                "a true/false label makes these KTO rows: use `objective: {name: dpo, loss: kto}`"
            )
        return "prompt_completion"
    if {"text", "label"} <= keys:
        return "classification"
    if "text" in keys:
        return "text"
    hint = _not_sft_hint(keys)
    raise DataError(
        f"cannot tell the data format from the keys {sorted(keys)}; expected {_EXPECTED_KEYS}{hint}"
    )


def _not_sft_hint(keys: set[str]) -> str:
    """Why rows of the preference / RL shapes are refused by supervised training, and what to use instead."""
    if "preferred_output" in keys or {"chosen", "rejected"} & keys:
        return "; these are preference pairs: train them with `objective: {name: dpo}` (or reward)"
    if "prompt" in keys:
        return "; prompts without completions are RL prompts (`objective: {name: grpo}`) or prediction inputs"
    return ""


def _string(row: dict, key: str, where: str = "") -> str:
    value = row.get(key)
    if value is None:
        raise _RowError(
            f"{where}missing key {key!r} (keys seen: {', '.join(sorted(map(str, row))) or 'none'})"
        )
    if not isinstance(value, str):
        raise _RowError(f"{where}key {key!r} must be a string, got {_json_type(value)}")
    return value


def _content_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI also allows content as a list of {"type": "text", "text": ...} parts.
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise _RowError(f"{where}key 'content' must be a string, got {_json_type(value)}")


def _check_tool_calls(tool_calls: Any, where: str) -> None:
    if not isinstance(tool_calls, list) or not tool_calls:
        raise _RowError(f"{where}key 'tool_calls' must be a non-empty array, got {_json_type(tool_calls)}")
    for j, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _RowError(
                f"{where}tool_calls[{j}] must look like {{'function': {{'name': ..., 'arguments': ...}}}}"
            )
        if not isinstance(function.get("arguments", "{}"), str | dict):
            raise _RowError(f"{where}tool_calls[{j}].function.arguments must be a JSON string or an object")


def _message(raw: Any, index: int, key: str = "messages") -> dict[str, Any]:
    where = f"{key}[{index}]: "
    if not isinstance(raw, dict):
        raise _RowError(f"{where}must be an object with 'role' and 'content', got {_json_type(raw)}")
    # Parquet fills keys a row lacks with null; treat them as absent.
    msg = {key: value for key, value in raw.items() if value is not None}
    role = _string(msg, "role", where)
    if role not in ROLES:
        raise _RowError(f"{where}unknown role {role!r} (allowed: {', '.join(ROLES)})")
    if role == "system" and index != 0:
        raise _RowError(f"{where}a system message may only come first")
    if "tool_calls" in msg:
        if role != "assistant":
            raise _RowError(f"{where}only assistant messages may carry 'tool_calls' (this one is {role!r})")
        _check_tool_calls(msg["tool_calls"], where)
    if "content" in msg:
        msg["content"] = _content_text(msg["content"], where)
    elif "tool_calls" not in msg:
        raise _RowError(f"{where}missing key 'content' (keys seen: {', '.join(sorted(map(str, raw)))})")
    if msg.get("weight", 1) not in (0, 1):
        raise _RowError(f"{where}key 'weight' must be 0 or 1, got {msg['weight']!r}")
    return msg


def _chat(row: dict, label_names: list[str] | None) -> Example | None:
    clean = _chat_messages(row)
    if clean[-1]["role"] != "assistant":
        raise _RowError(
            f"last turn is {clean[-1]['role']!r}, not 'assistant': the example must end with the reply "
            "(rows without a reply are RL prompts, `objective: {name: grpo}`, or prediction inputs, "
            "`tunesmith predict`)"
        )
    final = clean[-1]
    if not final.get("tool_calls") and not final.get("content", "").strip():
        return None
    return Example("", 0, "chat", messages=clean, extra=_rest(row, {"messages"}))


def _chat_messages(row: dict) -> list[dict[str, Any]]:
    """The validated ``messages`` of a chat row (CSV's JSON text parsed); the first turn is not the reply."""
    messages = row.get("messages")
    if isinstance(messages, str):  # CSV cells hold the conversation as JSON text
        try:
            messages = json.loads(messages)
        except (ValueError, RecursionError) as err:
            raise _RowError(f"key 'messages' is a string but not valid JSON: {_json_problem(err)}") from None
    if messages is None:
        _string(row, "messages")  # raises the uniform "missing key" message
    clean = message_list(messages, "messages")
    if clean[0]["role"] == "assistant":
        raise _RowError("the conversation starts with an assistant turn; put a user turn before it")
    return clean


def message_list(value: Any, key: str) -> list[dict[str, Any]]:
    """Validate a non-empty list of messages found under ``key`` (named in errors as ``key[i]: ...``).

    Raises:
        _RowError: Not a non-empty list, or a message that is not valid (see :func:`_message`).
    """
    if not isinstance(value, list) or not value:
        raise _RowError(f"key {key!r} must be a non-empty array of messages, got {_json_type(value)}")
    return [_message(raw, i, key) for i, raw in enumerate(value)]


def _two_turn(user: str, assistant: str, row: dict, used: set[str]) -> Example | None:
    if not assistant.strip():
        return None
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Example("", 0, "chat", messages=messages, extra=_rest(row, used))


def _instruction(row: dict, label_names: list[str] | None) -> Example | None:
    instruction, output = _string(row, "instruction"), _string(row, "output")
    return _two_turn(_instruction_user(row, instruction), output, row, {"instruction", "input", "output"})


def _instruction_user(row: dict, instruction: str) -> str:
    """The user turn of an instruction row: the instruction, then the optional input after a blank line."""
    extra_input = _string(row, "input") if row.get("input") is not None else ""
    return instruction + ("\n\n" + extra_input if extra_input.strip() else "")


def _prompt_completion(row: dict, label_names: list[str] | None) -> Example | None:
    prompt, completion = _string(row, "prompt"), _string(row, "completion")
    return _two_turn(prompt, completion, row, {"prompt", "completion"})


def _text(row: dict, label_names: list[str] | None) -> Example | None:
    text = _string(row, "text")
    if not text.strip():
        return None
    return Example("", 0, "text", text=text, extra=_rest(row, {"text"}))


def _is_id(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().isdecimal()
    return isinstance(value, int) and not isinstance(value, bool)


def _label_id(value: Any, label_names: list[str] | None) -> int:
    """Map a label (integer id, digit string, or label name) to its id.

    Raises:
        _RowError: Wrong type, unknown name, or id out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _RowError(f"key 'label' must be an integer id or a label name, got {_json_type(value)}")
    if isinstance(value, str):
        name = value.strip()
        if label_names is not None and name in label_names:
            return label_names.index(name)
        if not name.isdecimal():
            if label_names is None:
                raise _RowError(f"label {value!r} is a name but no label names are known; set data.labels")
            raise _RowError(f"unknown label {value!r} (labels: {', '.join(label_names)})")
        value = int(name)
    if value < 0 or (label_names is not None and value >= len(label_names)):
        allowed = f"0..{len(label_names) - 1} for {label_names}" if label_names else "ids start at 0"
        raise _RowError(f"label id {value} out of range ({allowed})")
    return value


def _classification(row: dict, label_names: list[str] | None) -> Example | None:
    text = _string(row, "text")
    if row.get("label") is None:
        _string(row, "label")  # raises the uniform "missing key" message
    label = _label_id(row["label"], label_names)
    if not text.strip():
        return None
    return Example("", 0, "classification", text=text, label=label, extra=_rest(row, {"text", "label"}))


def _rest(row: dict, used: set[str]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in used}


_CONVERTERS: dict[str, Callable[[dict, list[str] | None], Example | None]] = {
    "chat": _chat,
    "instruction": _instruction,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "classification": _classification,
}


def to_example(row: dict, fmt: str, source: str, line: int, label_names: list[str] | None) -> Example | None:
    """Validate one row of a known format and turn it into an :class:`Example`.

    Args:
        row: The parsed row.
        fmt: One of :data:`FORMATS`.
        source: File path, kept on the example and used in error messages.
        line: Line (or row number) of the row.
        label_names: Classification label names in id order; None accepts integer ids as given.

    Returns:
        The example, or None when it is empty (blank text, blank final assistant reply): nothing to learn.

    Raises:
        DataError: ``"{source}:{line}: "`` followed by what is wrong with the row.
    """
    if fmt not in _CONVERTERS:
        raise DataError(f"unknown data format {fmt!r} (known: {', '.join(FORMATS)})")
    try:
        example = _CONVERTERS[fmt](row, label_names)
    except _RowError as err:
        raise DataError(f"{source}:{line}: {err}") from None
    if example is not None:
        example.source, example.line = source, line
    return example


def infer_label_names(values: Iterable[Any]) -> list[str]:
    """Label names for raw label values when none are configured.

    Integer ids (or digit strings, as CSV gives them) become ``["0", "1", ..., str(max_id)]`` so ids keep
    their meaning; names become their sorted unique set. Values of the wrong type are ignored here (the row
    check reports them).

    Raises:
        DataError: The values mix ids and names.
    """
    usable = [v for v in values if isinstance(v, str | int) and not isinstance(v, bool)]
    ids = {int(v) for v in usable if _is_id(v)}
    names = {v.strip() for v in usable if not _is_id(v)}
    if ids and names:
        raise DataError(
            f"labels mix integer ids {sorted(ids)[:5]} and names {sorted(names)[:5]}; "
            "use one or the other, or list the names in data.labels"
        )
    if ids:
        return [str(i) for i in range(max(ids) + 1)]
    return sorted(names)


# ------------------------------------------------------------------------------------------- whole files


def _first_format(
    path: str | Path,
    rows: list[tuple[int, dict | DataError]],
    on_bad_row: str,
    detect: Callable[[dict], str] = detect_format,
) -> str:
    for line, row in rows:
        if isinstance(row, DataError):
            if on_bad_row == "stop":
                raise row
            continue
        try:
            return detect(row)
        except DataError as err:
            raise DataError(f"{path}:{line}: {err}") from None
    raise DataError(f"{path}: none of its {len(rows)} rows could be read; first problem: {rows[0][1]}")


def read_source(
    path: str | Path,
    fmt: str = "auto",
    on_bad_row: str = "stop",
    label_names: list[str] | None = None,
) -> SourceData:
    """Read and validate a whole file; like :func:`read_examples` but also returns the format and label names.

    Args:
        path: The data file.
        fmt: ``auto`` (detect from the first readable row) or one of :data:`FORMATS`.
        on_bad_row: ``stop`` raises on the first malformed row; ``skip`` drops and counts it.
        label_names: Classification label names in id order; inferred from the file when None.

    Raises:
        DataError: Missing/empty file, unknown format, or (with ``stop``) a malformed row.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r} (known: auto, {', '.join(FORMATS)})")
    check_on_bad_row(on_bad_row)
    rows = list(_iter_raw(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    if fmt == "auto":
        fmt = _first_format(path, rows, on_bad_row)
    if KIND_OF_FORMAT[fmt] == "classification" and label_names is None:
        try:
            label_names = infer_label_names(row.get("label") for _, row in rows if isinstance(row, dict))
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    counts = {"rows_read": len(rows), "malformed_skipped": 0, "empty_dropped": 0, "kept": 0}
    examples: list[Example] = []
    for line, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            example = to_example(row, fmt, str(path), line, label_names)
        except DataError:
            if on_bad_row == "stop":
                raise
            counts["malformed_skipped"] += 1
            continue
        if example is None:
            counts["empty_dropped"] += 1
        else:
            examples.append(example)
    counts["kept"] = len(examples)
    return SourceData(examples, counts, fmt, label_names)


def read_examples(
    path: str | Path,
    fmt: str = "auto",
    on_bad_row: str = "stop",
    label_names: list[str] | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """Read and validate a whole file.

    Args:
        path: The data file (see :func:`iter_rows` for the types).
        fmt: ``auto`` (detect from the first readable row) or one of :data:`FORMATS`.
        on_bad_row: ``stop`` raises on the first malformed row; ``skip`` drops and counts it.
        label_names: Classification label names in id order; inferred from the file when None
            (use :func:`read_source` to get the inferred names back).

    Returns:
        The examples and ``{"rows_read", "malformed_skipped", "empty_dropped", "kept"}``.

    Raises:
        DataError: Missing/empty file, unknown format, or (with ``stop``) a malformed row.
    """
    source = read_source(path, fmt, on_bad_row, label_names)
    return source.examples, source.counts
