"""``tunesmith data inspect`` on preference pairs, unpaired (KTO) rows and RL prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tunesmith.data.preference import render_preference_prompt
from tunesmith.data.preference_formats import read_preference_source
from tunesmith.data.tools.cli import add_parser
from tunesmith.data.tools.inspect import format_inspect, inspect_file, inspect_html
from tunesmith.data.tools.inspect_preference import preference_format

LONG = " ".join(f"word{i}" for i in range(60))


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """5 rows: a pair, a malformed row (line 2), an identical pair (line 3), an over-long pair, a pair."""
    return _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": "2+2?", "chosen": [{"role": "user", "content": "4"}], "rejected": "5"},
            {"prompt": "Same?", "chosen": "yes", "rejected": "yes"},
            {"prompt": "Count.", "chosen": LONG, "rejected": "no"},
            {"prompt": "3+3?", "chosen": "6", "rejected": "7", "id": 5},
        ],
    )


def test_inspect_reports_pairs_identical_pairs_and_token_lengths(pairs: Path, default_tokenizer) -> None:
    report = inspect_file(pairs, default_tokenizer, max_length=64)
    assert (report["format"], report["shape"], report["rows"], report["valid"]) == (
        "prompt_chosen_rejected",
        "preference",
        5,
        3,
    )
    assert (report["malformed"], report["identical_pairs"], report["identical_lines"]) == (1, 1, [3])
    assert report["malformed_rows"] == [
        {"line": 2, "error": f"{pairs}:2: chosen[0].role: expected 'assistant', got 'user'"}
    ]
    assert report["pairs"] == 3 and report["extra_fields"] == {"id": 1}
    tokens = report["tokens"]
    assert (tokens["over_max_length"], tokens["over_max_length_lines"]) == (1, [4])
    examples = read_preference_source(pairs, on_bad_row="skip").examples
    prompts = [len(render_preference_prompt(ex, default_tokenizer, None)) for ex in examples]
    assert tokens["prompt"]["max"] == max(prompts) and tokens["prompt"]["examples"] == 3
    assert tokens["rejected"]["min"] == 3  # "5", <|im_end|> and the template's newline
    sequences = report["example"]["sequences"]
    assert report["example"]["line"] == 1 and list(sequences) == ["chosen", "rejected"]
    assert [s["text"] for s in sequences["chosen"]["segments"] if s["trained"]] == ["4<|im_end|>"]
    text = format_inspect(report)
    assert "prompt_chosen_rejected format (preference rows)" in text
    assert (
        "rows: 5 (valid 3, malformed 1)" in text
        and "identical pairs (dropped by training): 1 (lines 3)" in text
    )
    assert "  pairs: 3" in text and "over max_length 64: 1 (lines 4)" in text and "[[4<|im_end|>]]" in text
    page = inspect_html(report)
    assert "<th>identical_pairs</th><td>1</td>" in page and "<mark>4&lt;|im_end|&gt;</mark>" in page


def test_inspect_unpaired_counts_desirable_completions(tmp_path: Path, default_tokenizer) -> None:
    rows = [
        {"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": "2+2?", "completion": "5", "label": False},
        {"prompt": "3+3?", "completion": "6", "label": True},
        {"prompt": "3+3?", "completion": "6", "label": "yes"},
    ]
    report = inspect_file(_jsonl(tmp_path / "kto.jsonl", rows), default_tokenizer, max_length=64)
    assert (report["shape"], report["desirable"], report["undesirable"], report["malformed"]) == (
        "unpaired",
        2,
        1,
        1,
    )
    assert report["tokens"]["completion"]["max"] == 3 and list(report["example"]["sequences"]) == [
        "completion"
    ]
    assert "completions: 2 desirable, 1 undesirable" in format_inspect(report)


def test_inspect_prompts_lists_the_fields_graders_can_read(tmp_path: Path, default_tokenizer) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"},
        {"messages": [{"role": "user", "content": "3+3?"}], "answer": "6", "level": 2},
    ]
    path = _jsonl(tmp_path / "rl.jsonl", rows)
    assert preference_format(path) == "chat_prompt"  # a chat row ending with a question
    report = inspect_file(path, default_tokenizer, max_length=64)
    assert (report["shape"], report["valid"], report["extra_fields"]) == (
        "prompt",
        2,
        {"answer": 2, "level": 1},
    )
    segments = report["example"]["sequences"]["prompt"]["segments"]
    assert len(segments) == 1 and not segments[0]["trained"]
    assert (
        "other fields (graders read them as item.<field>): answer (2 rows), level (1 rows)"
        in format_inspect(report)
    )


def test_supervised_files_are_not_taken_for_preference_data(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert preference_format(_jsonl(tmp_path / "sft.jsonl", [chat])) is None
    assert preference_format(_jsonl(tmp_path / "pc.jsonl", [{"prompt": "q", "completion": "a"}])) is None
    assert preference_format(tmp_path / "missing.jsonl") is None
    assert preference_format(tmp_path / "any.jsonl", "unpaired") == "unpaired"


def test_cli_inspect_reports_a_preference_file(pairs: Path, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="tunesmith")
    add_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "r.json"
    args = parser.parse_args(["data", "inspect", str(pairs), "--max-length", "64", "--json", str(out)])
    assert args.func(args) == 0
    assert "(preference rows)" in capsys.readouterr().out
    assert json.loads(out.read_text())["identical_pairs"] == 1
