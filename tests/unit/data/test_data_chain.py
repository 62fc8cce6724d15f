"""The whole ``tunesmith data`` chain on real TweetEval emotion tweets (skipped without ../shared/datasets).

inspect and lint look at the training file; leakage drops training rows that repeat validation rows; then
clean -> dedup -> pii -> split, each step reading what the one before wrote. The full 3,257 tweets take about
10 s on a busy 2-core CPU (tokenizer load aside), so nothing is subsampled.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.data.tools import (
    clean_file,
    dedup_file,
    find_leakage,
    find_pii,
    inspect_file,
    lint_file,
    redact_file,
    split_file,
)
from tunesmith.io import read_jsonl

EMOTION = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "tweeteval" / "emotion"
TRAIN, VAL = EMOTION / "train_text.txt", EMOTION / "val_text.txt"


@pytest.mark.skipif(not TRAIN.is_file(), reason="shared tweeteval dataset not present")
def test_chain_on_tweeteval(tmp_path, default_tokenizer):
    source_bytes = TRAIN.read_bytes()
    n_lines = source_bytes.count(b"\n")
    names = [line.split("\t")[1] for line in (EMOTION / "mapping.txt").read_text().splitlines()]

    looked = inspect_file(TRAIN, default_tokenizer, label_names=names)
    assert (looked["format"], looked["rows"], looked["valid"], looked["malformed"]) == (
        "classification",  # train_text.txt + train_labels.txt beside it
        n_lines,
        3257,
        0,
    )
    assert looked["labels"] == {"anger": 1400, "sadness": 855, "joy": 708, "optimism": 294}
    assert looked["duplicates"] == 25 and looked["tokens"]["over_max_length"] == 0
    linted = lint_file(TRAIN, default_tokenizer, label_names=names)
    assert (linted["checked"], linted["error_count"], linted["ok"]) == (3257, 0, True)
    # No system turn in any row: the template's default system prompt is used; lint says so once per row.
    assert linted["warnings"]["default_system_prompt"]["count"] == 3257

    leak = find_leakage(TRAIN, [VAL], tmp_path / "noleak.jsonl")
    assert (leak["rows_in"], leak["rows_out"], leak["dropped"]) == (3257, 3256, {"leak_near": 1})
    (pair,) = leak["details"]["pairs"]  # "Depression sucks!" in train, "depression sucks😔" in validation
    assert (pair["train_line"], pair["eval_line"], pair["kind"]) == (838, 7, "near")

    cleaned = clean_file(tmp_path / "noleak.jsonl", tmp_path / "clean.jsonl")
    assert cleaned["rows_in"] == leak["rows_out"]
    assert (cleaned["rows_out"], cleaned["dropped"]) == (3256, {})
    assert cleaned["changed"]["whitespace_collapsed"] == 3256  # every tweet ends with a space
    assert cleaned["changed"]["html_removed"] == 156  # "&amp;", "&gt;" ... in the raw tweets

    deduped = dedup_file(tmp_path / "clean.jsonl", tmp_path / "dedup.jsonl")
    assert deduped["rows_in"] == cleaned["rows_out"]
    # TweetEval repeats tweets that differ only by a removed hashtag: these are real near-duplicates.
    assert deduped["dropped"] == {"exact_duplicate": 25, "near_duplicate": 251}
    assert deduped["rows_out"] == 2980 == deduped["details"]["distinct_rows"] - 251

    redacted = redact_file(tmp_path / "dedup.jsonl", tmp_path / "pii.jsonl")
    assert redacted["rows_in"] == deduped["rows_out"] == redacted["rows_out"]
    rows = read_jsonl(tmp_path / "pii.jsonl")
    assert all(r["text"] and r["text"] == r["text"].strip() and "  " not in r["text"] for r in rows)
    assert all(find_pii(r["text"]) == [] for r in rows)

    split = split_file(tmp_path / "pii.jsonl", tmp_path / "splits", seed=0, stratify_by="label")
    assert split["rows"] == {"train": 2385, "validation": 298, "test": 297}
    assert sum(split["rows"].values()) == redacted["rows_out"]
    merged = [line for p in split["outputs"].values() for line in Path(p).read_text().splitlines()]
    assert sorted(merged) == sorted((tmp_path / "pii.jsonl").read_text().splitlines())
    assert TRAIN.read_bytes() == source_bytes  # the source is read, never written
