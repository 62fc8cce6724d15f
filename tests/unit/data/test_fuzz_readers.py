"""Fuzzing the data readers: whatever the file holds, reading it returns examples or raises a DataError that
names the file (``path:line: ...`` for a row), never another exception.

Files are built from rows that look almost right (every row format, preference rows included, with keys,
types and roles drawn from near misses) and from raw text and bytes, then written as JSONL, a JSON array,
CSV, Parquet or txt (with and without a TweetEval ``_labels.txt`` pair). Both readers read each file:
``read_source`` (supervised formats) and ``read_preference_source`` (pairs, KTO rows, prompts). Counts must
add up: every row read is kept, skipped or dropped.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import CASES, FAST, LONG, OUTCOMES, run_counted
from tunesmith.data.formats import FORMATS, read_source
from tunesmith.data.preference_formats import SHAPES, read_preference_source
from tunesmith.errors import DataError

KEYS = [
    "messages", "role", "content", "instruction", "input", "output", "prompt", "completion", "text", "label",
    "chosen", "rejected", "preferred_output", "non_preferred_output", "tool_calls", "function", "name",
    "arguments", "weight", "type", "tools", "id",
]  # fmt: skip
ROLES = ["system", "user", "assistant", "tool", "bot", "", "USER"]

texts = st.one_of(
    st.sampled_from(["", " ", "hi", "2", "²", "٣", "joy", "-1", "\x00", "a\nb"]), st.text(max_size=12)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=5),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | texts, inner, max_size=3)
    ),
    max_leaves=8,
)
tool_calls = st.lists(
    st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": texts, "arguments": json_values})})
    | json_values,
    max_size=2,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES) | json_values},
        optional={
            "content": texts
            | json_values
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts})),
            "tool_calls": tool_calls,
            "weight": st.sampled_from([0, 1, 2, "1", None]),
        },
    )
    | json_values,
    max_size=4,
)
replies = texts | messages | json_values


def _row(template: dict[str, Any]) -> st.SearchStrategy[dict]:
    """A row with the template's keys (each sometimes dropped) plus an odd extra key now and then."""
    return st.fixed_dictionaries({}, optional=template).flatmap(
        lambda row: st.dictionaries(st.sampled_from(KEYS) | texts, json_values, max_size=1).map(
            lambda extra: {**extra, **row}
        )
    )


rows = st.one_of(
    _row({"messages": messages}),
    _row({"instruction": texts, "input": texts | st.none(), "output": texts}),
    _row({"prompt": texts | messages, "completion": replies}),
    _row({"text": texts, "label": st.integers(-1, 3) | texts | st.booleans() | json_values}),
    _row({"text": texts}),
    _row({"input": st.fixed_dictionaries({"messages": messages}), "preferred_output": replies,
          "non_preferred_output": replies}),
    _row({"prompt": texts | messages, "chosen": replies, "rejected": replies}),
    _row({"chosen": messages, "rejected": messages}),
    _row({"prompt": texts | messages, "completion": replies, "label": st.booleans() | json_values}),
    _row({"prompt": texts | messages}),
    json_values,
)  # fmt: skip


def _jsonl(items: list[Any], junk: list[str]) -> bytes:
    lines = [json.dumps(item) for item in items] + junk
    return "\n".join(lines).encode()


def _csv(items: list[Any]) -> bytes:
    dicts = [item for item in items if isinstance(item, dict)]
    header = sorted({str(key) for item in dicts for key in item}) or ["text"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for item in dicts:
        # Nested values go in as JSON text, as a spreadsheet export would hold them.
        writer.writerow([v if isinstance(v := item.get(k), str) else json.dumps(v) for k in header])
    return out.getvalue().encode()


def _parquet(items: list[Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dicts = [item for item in items if isinstance(item, dict)] or [{"text": "x"}]
    sink = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(dicts), sink)
    except (pa.ArrowException, OverflowError):  # mixed types in a column, empty structs: cells as JSON text
        keys = sorted({str(k) for d in dicts for k in d})
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{k: json.dumps(d.get(k)) for k in keys} for d in dicts]), sink)
    return sink.getvalue()


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, bytes, bytes | None]:
    """(suffix or name, file bytes, optional ``_labels.txt`` bytes) for one fuzzed data file."""
    items = draw(st.lists(rows, max_size=5))
    kind = draw(st.sampled_from(["jsonl", "json", "json_lines", "csv", "parquet", "txt", "raw"]))
    labels = None
    if kind == "jsonl":
        data = _jsonl(items, draw(st.lists(texts, max_size=2)))
    elif kind == "json":
        data = json.dumps(items, indent=draw(st.sampled_from([None, 1]))).encode()
        data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    elif kind == "json_lines":
        data = _jsonl(items, [])
    elif kind == "csv":
        data = _csv(items)
    elif kind == "parquet":
        data = _parquet(items)
        data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    elif kind == "txt":
        lines = draw(st.lists(texts, max_size=5))
        data = "\n".join(lines).encode()
        if draw(st.booleans()):
            kind = "pair_text.txt"
            labels = "\n".join(draw(st.lists(texts, min_size=len(lines), max_size=len(lines)))).encode()
    else:
        kind = draw(st.sampled_from(["jsonl", "json", "csv", "parquet", "txt"]))
        data = draw(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
    suffix = {"json_lines": "json"}.get(kind, kind)
    return suffix, data, labels


def _write(directory: Path, case: tuple[str, bytes, bytes | None]) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    suffix, data, labels = case
    path = directory / (suffix if "." in suffix else f"data.{suffix}")
    path.write_bytes(data)
    if labels is not None:
        (directory / "pair_labels.txt").write_bytes(labels)
    return path


def _check_error(err: DataError, directory: Path) -> None:
    # Every message points at the file (row errors as path:line:), so the user can open it.
    assert str(err).startswith(str(directory)), str(err)


def _read_both(directory: Path, case: Any, fmt: str, shape: str, on_bad_row: str, names: Any) -> None:
    path = _write(directory, case)
    try:
        source = read_source(path, fmt, on_bad_row, names)
    except DataError as err:
        OUTCOMES["data readers DataError"] += 1
        _check_error(err, directory)
    else:
        OUTCOMES[f"data readers {'examples' if source.examples else 'no examples'}"] += 1
        counts = source.counts
        assert counts["rows_read"] == counts["kept"] + counts["malformed_skipped"] + counts["empty_dropped"]
        assert counts["kept"] == len(source.examples) and all(ex.line >= 1 for ex in source.examples)
    if path.suffix == ".txt":
        return  # the preference reader reads JSON, CSV and Parquet rows
    try:
        pref = read_preference_source(path, shape, on_bad_row)
    except DataError as err:
        _check_error(err, directory)
    else:
        counts = pref.counts
        dropped = counts["malformed_skipped"] + counts["identical_pairs_dropped"]
        assert counts["rows_read"] == counts["kept"] + dropped
        assert all(ex.kind in SHAPES for ex in pref.examples)


def _fuzz(tmp_path: Path, n: int) -> int:
    @given(
        case=data_files(),
        fmt=st.sampled_from(("auto", *FORMATS)),
        shape=st.sampled_from(("auto", *SHAPES)),
        on_bad_row=st.sampled_from(["stop", "skip"]),
        names=st.none()
        | st.lists(st.sampled_from(["joy", "anger", "2", "0"]), min_size=1, max_size=3, unique=True),
    )
    def prop(case: Any, fmt: str, shape: str, on_bad_row: str, names: Any) -> None:
        CASES["data readers"] += 1
        _read_both(tmp_path / "case", case, fmt, shape, on_bad_row, names)

    return run_counted("data readers", n, prop)


def test_readers_raise_only_data_errors_naming_the_file(tmp_path):
    assert _fuzz(tmp_path, FAST) >= FAST


@pytest.mark.chaos
def test_readers_fuzz_long(tmp_path):
    assert _fuzz(tmp_path, LONG) >= LONG


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("deep.jsonl", b"[" * 100_000, "invalid JSON: nested too deeply"),
        ("deep.json", b"[" + b"[" * 100_000, "invalid JSON: nested too deeply"),
        ("big.jsonl", b'{"text": "a", "label": ' + b"9" * 5000 + b"}", "invalid JSON: Exceeds the limit"),
        ("deep.csv", b'messages\n"' + b"[" * 100_000 + b'"\n', "not valid JSON: nested too deeply"),
        ("bad_text.txt", b"a\nb\n", "unknown label"),
    ],
)
def test_crashes_found_by_fuzzing_are_data_errors(tmp_path, name, data, needle):
    """Each input here once escaped as RecursionError / ValueError (found by the fuzzer or by reading it)."""
    path = tmp_path / name
    path.write_bytes(data)
    (tmp_path / "bad_labels.txt").write_text("²\n1\n")  # "²" is a digit to str.isdigit(), not to int()
    with pytest.raises(DataError, match=needle) as err:
        read_source(path, label_names=["a", "b"] if name == "bad_text.txt" else None)
    assert str(err.value).startswith(f"{path}:{2 if name.endswith('.csv') else 1}: ")  # CSV: after the header
