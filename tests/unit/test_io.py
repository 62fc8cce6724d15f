"""The project's own JSON Lines files: written atomically, read back row for row."""

from __future__ import annotations

import json

import pytest

from tunesmith.io import parse_jsonl, read_jsonl, write_jsonl_atomic


def test_rows_written_are_the_rows_read(tmp_path):
    rows = [{"q": "Größe?", "a": ["XS", "M"]}, {"n": 1.5, "none": None}]
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl_atomic(path, rows)
    assert read_jsonl(path) == rows
    assert "Größe" in path.read_text(encoding="utf-8")  # written as text, not \\u escapes
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temp file left behind


def test_blank_lines_are_skipped_and_a_bad_line_raises():
    assert parse_jsonl('{"a": 1}\n\n  \n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    with pytest.raises(json.JSONDecodeError):
        parse_jsonl('{"a": 1}\n{"a": \n')
