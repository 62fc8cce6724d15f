"""Splits, over-length policy, cache and data report, on small files with known contents."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tunesmith.data.prepare as prepare_module
from tunesmith.config import DataConfig
from tunesmith.data.prepare import fingerprint_tokenizer, prepare_data
from tunesmith.data.render import IGNORE_INDEX, render_example
from tunesmith.errors import DataError

LONG = " ".join(["word"] * 300)  # about 300 tokens


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets an empty tokenized cache, so hits and misses are the test's own."""
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))


def _jsonl(path: Path, rows: list) -> str:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


def _chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _texts(n: int) -> list[dict]:
    return [{"text": f"example number {i}"} for i in range(n)]


def _lines(split) -> list[int]:
    return [ex.line for ex in split.examples]


def test_no_train_file_is_a_clear_error(default_tokenizer) -> None:
    with pytest.raises(DataError, match=r"^data\.train is not set"):
        prepare_data(DataConfig(), default_tokenizer, 0)


def test_counts_for_empty_malformed_and_overlong_rows_truncate(tmp_path: Path, default_tokenizer) -> None:
    rows = [
        _chat("Capital of France?", "Paris."),
        _chat("Say nothing", " "),  # empty answer
        "{broken",  # malformed
        _chat("Write a lot", LONG),  # answer cut, prompt kept
        _chat(LONG, "Too late."),  # the answer starts past max_length: nothing left to learn
        _chat("Capital of Italy?", "Rome."),
    ]
    cfg = DataConfig(train=_jsonl(tmp_path / "train.jsonl", rows), validation_fraction=0.0, max_length=64)
    cfg.on_bad_row = "skip"
    data = prepare_data(cfg, default_tokenizer, 0)
    train = data.report["splits"]["train"]
    assert {k: train[k] for k in ("rows_read", "malformed_skipped", "empty_dropped", "truncated")} == {
        "rows_read": 6,
        "malformed_skipped": 1,
        "empty_dropped": 1,
        "truncated": 1,
    }
    assert (train["dropped_overlong"], train["dropped_no_target"], train["kept"]) == (0, 1, 3)
    assert _lines(data.train) == [1, 4, 6]
    assert data.validation is None and data.report["validation"] == "none"
    # Truncation keeps the start of the prompt and cuts the end.
    full_ids, full_labels = render_example(
        data.train.examples[1], default_tokenizer, None, None, cfg.label_prompt
    )
    assert len(data.train.input_ids[1]) == 64
    assert data.train.input_ids[1] == full_ids[:64] and data.train.labels[1] == full_labels[:64]
    assert train["tokens"] == sum(map(len, data.train.input_ids))
    assert train["target_tokens"] == sum(sum(x != IGNORE_INDEX for x in lab) for lab in data.train.labels)
    parts = ("malformed_skipped", "empty_dropped", "dropped_overlong", "dropped_no_target", "kept")
    assert sum(train[k] for k in parts) == train["rows_read"]


def test_overlong_drop_mode(tmp_path: Path, default_tokenizer) -> None:
    rows = [_chat("Hi", "Hello."), _chat("Write a lot", LONG), _chat(LONG, "Too late.")]
    cfg = DataConfig(
        train=_jsonl(tmp_path / "t.jsonl", rows), validation_fraction=0, max_length=64, overlong="drop"
    )
    data = prepare_data(cfg, default_tokenizer, 0)
    train = data.report["splits"]["train"]
    assert (train["dropped_overlong"], train["truncated"], train["dropped_no_target"], train["kept"]) == (
        2,
        0,
        0,
        1,
    )
    assert _lines(data.train) == [1]


def test_malformed_json_stops_at_its_line(tmp_path: Path, default_tokenizer) -> None:
    path = _jsonl(tmp_path / "file.jsonl", [{"text": "a"}, {"text": "b"}, '{"text": "c"', {"text": "d"}])
    with pytest.raises(DataError, match=r"file\.jsonl:3: invalid JSON"):
        prepare_data(DataConfig(train=path), default_tokenizer, 0)


def test_unknown_keys_and_empty_file(tmp_path: Path, default_tokenizer) -> None:
    unknown = _jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"u\.jsonl:1: cannot tell the data format"):
        prepare_data(DataConfig(train=unknown), default_tokenizer, 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        prepare_data(DataConfig(train=str(empty)), default_tokenizer, 0)
    with pytest.raises(DataError, match=r"gone\.jsonl: file not found"):
        prepare_data(DataConfig(train=str(tmp_path / "gone.jsonl")), default_tokenizer, 0)


def test_all_rows_dropped_is_an_error(tmp_path: Path, default_tokenizer) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [_chat(LONG, "x")])
    with pytest.raises(
        DataError, match=r"no usable training examples .*1 with no answer left after truncation"
    ):
        prepare_data(DataConfig(train=path, max_length=32), default_tokenizer, 0)


def test_validation_file_of_another_format_names_both(tmp_path: Path, default_tokenizer) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [_chat("a", "b")])
    val = _jsonl(tmp_path / "val.jsonl", [{"text": "plain"}])
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train=train, validation=val), default_tokenizer, 0)
    message = str(info.value)
    assert "val.jsonl is in 'text' format" in message and "train.jsonl is in 'chat' format" in message


def test_instruction_train_with_chat_validation_is_accepted(tmp_path: Path, default_tokenizer) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [{"instruction": "a", "output": "b"}])
    val = _jsonl(tmp_path / "val.jsonl", [_chat("a", "b")])
    data = prepare_data(DataConfig(train=train, validation=val), default_tokenizer, 0)
    assert data.train.input_ids == data.validation.input_ids
    assert (data.report["format"], data.kind, data.report["validation"]) == ("instruction", "chat", "file")


def test_seeded_validation_split_is_reproducible_and_disjoint(tmp_path: Path, default_tokenizer) -> None:
    path = _jsonl(tmp_path / "t.jsonl", _texts(20))
    cfg = DataConfig(train=path, validation_fraction=0.25)
    first = prepare_data(cfg, default_tokenizer, seed=0)
    again = prepare_data(cfg, default_tokenizer, seed=0)
    other = prepare_data(cfg, default_tokenizer, seed=1)
    assert (len(first.train), len(first.validation)) == (15, 5)
    assert _lines(first.validation) == _lines(again.validation)
    assert _lines(first.validation) != _lines(other.validation)
    assert set(_lines(first.train)).isdisjoint(_lines(first.validation))
    assert sorted(_lines(first.train) + _lines(first.validation)) == list(range(1, 21))
    assert first.report["splits"]["train"]["held_out_for_validation"] == 5
    assert first.report["splits"]["validation"]["held_out_from"] == "train"
    assert first.report["validation"] == "held_out"


def test_cache_hit_does_not_render_and_max_length_change_misses(
    tmp_path: Path, default_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [_chat("Capital of France?", "Paris."), _chat("2+2?", "4")])
    test = _jsonl(tmp_path / "test.jsonl", [_chat("Capital of Spain?", "Madrid.")])
    cfg = DataConfig(train=path, test=test, validation_fraction=0)
    first = prepare_data(cfg, default_tokenizer, 0)
    assert first.report["cache"] == "miss"

    def no_render(*args, **kwargs):
        raise AssertionError("render_example must not run on a cache hit")

    monkeypatch.setattr(prepare_module, "render_example", no_render)
    second = prepare_data(cfg, default_tokenizer, 0)
    assert second.report["cache"] == "hit"
    assert second.train == first.train and second.test == first.test
    assert second.report["splits"] == first.report["splits"]
    cfg.max_length = 37
    with pytest.raises(AssertionError, match="must not run on a cache hit"):
        prepare_data(cfg, default_tokenizer, 0)  # a different key: it has to tokenize again
    monkeypatch.setattr(prepare_module, "render_example", render_example)
    shorter = prepare_data(cfg, default_tokenizer, 0)
    assert shorter.report["cache"] == "miss"
    assert [len(ids) for ids in shorter.train.input_ids] == [37, 37]  # 38 and 38 tokens before


def test_report_is_json_and_names_files_by_hash(tmp_path: Path, default_tokenizer) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [_chat("Capital of France?", "Paris.")])
    data = prepare_data(DataConfig(train=path, max_length=128), default_tokenizer, 0)
    report = json.loads(json.dumps(data.report))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert report["files"] == {"train": {"path": path, "sha256": digest}}
    assert (report["format"], report["max_length"], report["label_names"]) == ("chat", 128, None)
    assert report["splits"]["train"] == {
        "rows_read": 1,
        "malformed_skipped": 0,
        "empty_dropped": 0,
        "kept": 1,
        "truncated": 0,
        "dropped_overlong": 0,
        "dropped_no_target": 0,
        "tokens": 38,
        "target_tokens": 3,  # "Paris", ".", "<|im_end|>"
    }


def test_csv_parquet_and_jsonl_tokenize_identically(tmp_path: Path, default_tokenizer) -> None:
    rows = [{"text": "great film", "label": "pos"}, {"text": "dull, long", "label": "neg"}]
    jsonl = _jsonl(tmp_path / "d.jsonl", rows)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\ngreat film,pos\n"dull, long",neg\n', encoding="utf-8")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    results = [
        prepare_data(DataConfig(train=str(p), validation_fraction=0), default_tokenizer, 0)
        for p in (jsonl, csv_path, parquet)
    ]
    for data in results:
        assert (data.kind, data.label_names) == ("classification", ["neg", "pos"])
        assert data.train.input_ids == results[0].train.input_ids
        assert data.train.labels == results[0].train.labels
        assert [ex.label for ex in data.train.examples] == [1, 0]


def test_validation_labels_use_the_train_names(tmp_path: Path, default_tokenizer) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    val = _jsonl(tmp_path / "val.jsonl", [{"text": "c", "label": "neg"}])
    data = prepare_data(DataConfig(train=train, validation=val), default_tokenizer, 0)
    assert data.validation.examples[0].label == 0
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "c", "label": "meh"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: unknown label 'meh' \(labels: neg, pos\)"):
        prepare_data(DataConfig(train=train, validation=bad), default_tokenizer, 0)


def test_fingerprint_tracks_the_chat_template(default_tokenizer) -> None:
    tokenizer = copy.deepcopy(default_tokenizer)
    before = fingerprint_tokenizer(tokenizer)
    assert fingerprint_tokenizer(tokenizer) == before == fingerprint_tokenizer(default_tokenizer)
    tokenizer.chat_template = "{{ 'x' }}"
    assert fingerprint_tokenizer(tokenizer) != before
