"""Reading and validating rows: every format, every file type, exact error messages and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import DATASETS
from tunesmith.data.formats import (
    Example,
    detect_format,
    infer_label_names,
    iter_rows,
    read_examples,
    read_source,
    to_example,
)
from tunesmith.errors import DataError

OPENAI = DATASETS / "openai-format"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _chat(user: str = "Capital of France?", answer: str = "Paris.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _error(row: dict, fmt: str, label_names: list[str] | None = None) -> str:
    with pytest.raises(DataError) as info:
        to_example(row, fmt, "f.jsonl", 7, label_names)
    return str(info.value)


# ------------------------------------------------------------------------------------------ the real files


@pytest.mark.parametrize(
    ("folder", "split", "rows"),
    [
        ("gsm8k-chat", "train", 449),
        ("gsm8k-chat", "validation", 50),
        ("tool-calling", "train", 86),
        ("tool-calling", "validation", 10),
    ],
)
def test_openai_format_files_load_without_errors(folder: str, split: str, rows: int) -> None:
    examples, counts = read_examples(OPENAI / folder / f"{split}.jsonl")
    assert counts == {"rows_read": rows, "malformed_skipped": 0, "empty_dropped": 0, "kept": rows}
    assert all(ex.kind == "chat" and ex.messages[-1]["role"] == "assistant" for ex in examples)
    assert [ex.line for ex in examples[:3]] == [1, 2, 3]


def test_tool_calling_rows_keep_tools_and_null_content_tool_calls() -> None:
    examples, _ = read_examples(OPENAI / "tool-calling" / "train.jsonl")
    first = examples[0]
    assert list(first.extra) == ["tools"]
    assert len(first.extra["tools"]) == 2
    final = first.messages[-1]
    assert "content" not in final
    assert final["tool_calls"][0]["function"]["name"] == "get_last_nday_stock_price"
    assert sum(1 for ex in examples if ex.messages[-1].get("tool_calls")) == 36


def test_preference_pairs_are_refused_with_a_hint() -> None:
    hint = r"pairs\.jsonl:1: .*these are preference pairs: train them with `objective: \{name: dpo\}`"
    with pytest.raises(DataError, match=hint):
        read_examples(OPENAI / "orca-dpo-pairs" / "pairs.jsonl")


# ------------------------------------------------------------------------------------------ format detection


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (_chat(), "chat"),
        ({"instruction": "a", "output": "b"}, "instruction"),
        ({"instruction": "a", "input": "x", "output": "b"}, "instruction"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"text": "a", "label": 1}, "classification"),
        ({"text": "a", "label": None}, "text"),
        ({"text": "a", "group": "g"}, "text"),
    ],
)
def test_detect_format(row: dict, fmt: str) -> None:
    assert detect_format(row) == fmt


def test_detect_format_names_keys_seen_and_expected() -> None:
    with pytest.raises(DataError) as info:
        detect_format({"question": "q", "answer": "a"})
    message = str(info.value)
    assert "['answer', 'question']" in message
    assert "messages (chat)" in message and "prompt+completion (prompt_completion)" in message


# ------------------------------------------------------------------------------------------ chat rows


def test_chat_errors_say_exactly_what_is_wrong() -> None:
    bot = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    assert _error(bot, "chat") == (
        "f.jsonl:7: messages[1]: unknown role 'bot' (allowed: system, user, assistant, tool)"
    )
    no_content = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}
    assert _error(no_content, "chat") == "f.jsonl:7: messages[1]: missing key 'content' (keys seen: role)"
    last_user = {"messages": [{"role": "user", "content": "hi"}]}
    assert _error(last_user, "chat") == (
        "f.jsonl:7: last turn is 'user', not 'assistant': the example must end with the reply (rows without "
        "a reply are RL prompts, `objective: {name: grpo}`, or prediction inputs, `tunesmith predict`)"
    )
    wrong_type = {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}
    assert _error(wrong_type, "chat") == "f.jsonl:7: messages[0]: key 'content' must be a string, got integer"
    assert _error({"messages": "nope"}, "chat").startswith(
        "f.jsonl:7: key 'messages' is a string but not valid"
    )
    assert _error({"messages": []}, "chat") == (
        "f.jsonl:7: key 'messages' must be a non-empty array of messages, got array"
    )
    assert _error({"text": "x"}, "chat") == "f.jsonl:7: missing key 'messages' (keys seen: text)"


def test_chat_structure_rules() -> None:
    late_system = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    assert "messages[1]: a system message may only come first" in _error(late_system, "chat")
    starts_with_assistant = {"messages": [{"role": "assistant", "content": "a"}]}
    assert "starts with an assistant turn" in _error(starts_with_assistant, "chat")
    user_tool_calls = {
        "messages": [
            {"role": "user", "content": "a", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
            {"role": "assistant", "content": "c"},
        ]
    }
    assert "only assistant messages may carry 'tool_calls'" in _error(user_tool_calls, "chat")
    bad_weight = _chat()
    bad_weight["messages"][1]["weight"] = 0.5
    assert "key 'weight' must be 0 or 1, got 0.5" in _error(bad_weight, "chat")


def test_chat_accepts_openai_extras_and_null_keys() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "s", "name": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "It is 42.", "weight": 1, "tool_calls": None},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "parallel_tool_calls": False,
    }
    ex = to_example(row, "chat", "f.jsonl", 3, None)
    assert ex is not None and (ex.source, ex.line, ex.kind) == ("f.jsonl", 3, "chat")
    assert ex.messages[1]["content"] == "ab"  # content parts joined
    assert "content" not in ex.messages[2]  # null dropped, tool_calls kept
    assert ex.messages[4] == {"role": "assistant", "content": "It is 42.", "weight": 1}
    assert set(ex.extra) == {"tools", "parallel_tool_calls"}


def test_empty_final_answer_is_dropped_not_an_error() -> None:
    assert to_example(_chat(answer="  \n"), "chat", "f", 1, None) is None
    assert to_example({"instruction": "a", "output": ""}, "instruction", "f", 1, None) is None
    assert to_example({"text": " "}, "text", "f", 1, None) is None
    assert to_example({"text": "", "label": 0}, "classification", "f", 1, None) is None


# ------------------------------------------------------------------------------------------ other formats


def test_instruction_and_prompt_completion_become_chats() -> None:
    with_input = to_example(
        {"instruction": "Sum.", "input": "1 2", "output": "3", "id": 9}, "instruction", "f", 1, None
    )
    assert with_input.messages == [
        {"role": "user", "content": "Sum.\n\n1 2"},
        {"role": "assistant", "content": "3"},
    ]
    assert with_input.extra == {"id": 9}
    no_input = to_example({"instruction": "Sum.", "input": "", "output": "3"}, "instruction", "f", 1, None)
    assert no_input.messages[0] == {"role": "user", "content": "Sum."}
    pc = to_example({"prompt": "2+2=", "completion": "4"}, "prompt_completion", "f", 1, None)
    assert pc.messages == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    assert _error({"instruction": "a", "output": 3}, "instruction") == (
        "f.jsonl:7: key 'output' must be a string, got integer"
    )
    assert _error({"prompt": "a"}, "prompt_completion") == (
        "f.jsonl:7: missing key 'completion' (keys seen: prompt)"
    )


def test_classification_labels() -> None:
    names = ["neg", "pos"]
    assert to_example({"text": "t", "label": "pos"}, "classification", "f", 1, names).label == 1
    assert to_example({"text": "t", "label": 0}, "classification", "f", 1, names).label == 0
    assert to_example({"text": "t", "label": " 1"}, "classification", "f", 1, names).label == 1  # CSV id
    assert to_example({"text": "t", "label": 3}, "classification", "f", 1, None).label == 3
    ex = to_example(
        {"text": "t", "label": "pos", "value": 0.5, "group": "a"}, "classification", "f", 1, names
    )
    assert ex.extra == {"value": 0.5, "group": "a"}
    assert _error({"text": "t", "label": "meh"}, "classification", names) == (
        "f.jsonl:7: unknown label 'meh' (labels: neg, pos)"
    )
    assert _error({"text": "t", "label": 2}, "classification", names) == (
        "f.jsonl:7: label id 2 out of range (0..1 for ['neg', 'pos'])"
    )
    assert "must be an integer id or a label name, got boolean" in _error(
        {"text": "t", "label": True}, "classification"
    )
    assert "no label names are known" in _error({"text": "t", "label": "pos"}, "classification")


def test_infer_label_names() -> None:
    assert infer_label_names(["joy", "anger", "joy", None]) == ["anger", "joy"]
    assert infer_label_names([2, "0", 1]) == ["0", "1", "2"]
    with pytest.raises(DataError, match="mix integer ids"):
        infer_label_names([0, "joy"])


def test_read_source_infers_label_names_from_the_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    source = read_source(path)
    assert (source.format, source.label_names) == ("classification", ["neg", "pos"])
    assert [ex.label for ex in source.examples] == [1, 0]


# ------------------------------------------------------------------------------------------ files


def test_counts_for_planted_empty_and_malformed_rows(tmp_path: Path) -> None:
    rows = [_chat(), _chat(answer=""), "{not json", "", _chat(answer=" "), "[1, 2]", _chat(user="u2")]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert str(info.value).startswith(f"{path}:3: invalid JSON: Expecting property name enclosed")
    examples, counts = read_examples(path, on_bad_row="skip")
    assert counts == {"rows_read": 6, "malformed_skipped": 2, "empty_dropped": 2, "kept": 2}
    assert [ex.line for ex in examples] == [1, 7]  # the blank line 4 is not a row but still counts as a line


def test_json_array_file_keeps_editor_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n\n  {"text": "b"}\n]\n', encoding="utf-8")
    assert list(iter_rows(path)) == [(2, {"text": "a"}), (4, {"text": "b"})]
    (tmp_path / "bad.json").write_text('[\n {"text": "a"}\n {"text": "b"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON: expected ',' or ']'"):
        list(iter_rows(tmp_path / "bad.json"))


def test_csv_lines_count_the_header_and_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",pos\nplain,neg\nshort\n', encoding="utf-8")
    rows = list(read_source(path, on_bad_row="skip").examples)
    assert [(ex.line, ex.text, ex.label) for ex in rows] == [(2, "two\nlines", 1), (4, "plain", 0)]
    with pytest.raises(DataError, match=r"d\.csv:5: row has fewer fields than the header \(2\)"):
        read_examples(path)


def test_txt_is_one_text_per_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\nthird line\n", encoding="utf-8")
    examples, counts = read_examples(path)
    assert [(ex.line, ex.text, ex.kind) for ex in examples] == [
        (1, "first line", "text"),
        (3, "third line", "text"),
    ]
    assert counts == {"rows_read": 3, "malformed_skipped": 0, "empty_dropped": 1, "kept": 2}


def test_csv_and_parquet_give_the_same_examples_as_jsonl(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Add.", "input": "1 2", "output": "3"},
        {"instruction": 'Greet, "politely".', "input": "", "output": "Hello,\nfriend"},
    ]
    jsonl = _jsonl(tmp_path / "d.jsonl", rows)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text(
        'instruction,input,output\nAdd.,1 2,3\n"Greet, ""politely"".",,"Hello,\nfriend"\n', encoding="utf-8"
    )
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)

    def strip(examples: list[Example]) -> list[tuple]:
        return [(ex.kind, ex.messages, ex.text, ex.label, ex.extra) for ex in examples]

    from_jsonl = strip(read_examples(jsonl)[0])
    assert strip(read_examples(csv_path)[0]) == from_jsonl
    assert strip(read_examples(parquet)[0]) == from_jsonl
    assert [ex.line for ex in read_examples(parquet)[0]] == [1, 2]


def test_parquet_chat_with_null_filled_struct_fields(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)  # the second row's weight becomes null
    examples, counts = read_examples(path)
    assert counts["kept"] == 2
    assert examples[1].messages[1] == {"role": "assistant", "content": "a2"}


def test_file_level_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^.*empty\.jsonl: no rows$"):
        read_examples(empty)
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "d.xlsx").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        read_examples(tmp_path / "d.xlsx")
    unknown = _jsonl(tmp_path / "u.jsonl", [{"question": "q"}])
    with pytest.raises(
        DataError, match=r"u\.jsonl:1: cannot tell the data format from the keys \['question'\]"
    ):
        read_examples(unknown)
    with pytest.raises(DataError, match="unknown data format 'yaml'"):
        read_examples(unknown, fmt="yaml")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text"):
        read_examples(latin1)


def test_forced_format_reports_missing_keys(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing key 'messages' \(keys seen: text\)"):
        read_examples(path, fmt="chat")
