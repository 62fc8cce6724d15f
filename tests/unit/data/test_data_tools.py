"""Row-level data tools (tunesmith.data.tools): planted inputs, exact counts, exact outputs."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.data.tools import (
    CleanOptions,
    NearDupConfig,
    add_report_entry,
    augment_file,
    clean_file,
    clean_text,
    contamination,
    dedup_file,
    dedup_files,
    find_leakage,
    find_pii,
    map_text,
    redact_file,
    redact_text,
    split_file,
    text_fields,
    transform_file,
)
from tunesmith.data.tools.pii import iban_valid, luhn_valid
from tunesmith.data.tools.split import apportion
from tunesmith.errors import DataError
from tunesmith.io import read_jsonl


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- textfields ------------------------------------------------------------------------------------------


def test_text_fields_every_shape():
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "url": "x"}]},
            {"role": "assistant", "content": "Hello", "weight": 1},
        ],
        "id": 3,
    }
    assert text_fields(chat) == [
        ("messages.0.content", "Be brief."),
        ("messages.1.content.0.text", "Hi"),
        ("messages.2.content", "Hello"),
    ]
    assert text_fields({"instruction": "I", "input": "N", "output": "O"}) == [
        ("instruction", "I"),
        ("input", "N"),
        ("output", "O"),
    ]
    assert text_fields({"prompt": "P", "completion": "C"}) == [("prompt", "P"), ("completion", "C")]
    assert text_fields({"text": "T", "label": "joy"}) == [("text", "T")]
    assert text_fields({"text": None, "label": 1}) == []


def test_map_text_leaves_other_keys_and_input_alone():
    row = {"messages": [{"role": "user", "content": "ab"}], "label": "x", "meta": {"text": "inner"}}
    new = map_text(row, str.upper)
    assert new == {"messages": [{"role": "user", "content": "AB"}], "label": "x", "meta": {"text": "inner"}}
    assert row["messages"][0]["content"] == "ab"  # not mutated
    assert map_text({"text": "a", "label": "b", "id": 1}, str.upper) == {"text": "A", "label": "b", "id": 1}


# --- stream ----------------------------------------------------------------------------------------------


def test_transform_file_refuses_to_overwrite_input(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    before = src.read_bytes()
    with pytest.raises(DataError, match="never modify their input"):
        transform_file(src, tmp_path / "." / "a.jsonl", lambda row, line: (row, []))
    assert src.read_bytes() == before


def test_transform_file_is_atomic_and_counts(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": str(i)} for i in range(5)])
    dst = tmp_path / "out.jsonl"

    def step(row, line):
        if line == 2:
            return None, ["dropped_two"]
        return {**row, "text": row["text"] + "!"}, ["excited"]

    report = transform_file(src, dst, step, name="t", details=lambda: {"extra": 1})
    assert read_jsonl(dst) == [{"text": "0!"}, {"text": "2!"}, {"text": "3!"}, {"text": "4!"}]
    assert (report["rows_in"], report["rows_out"], report["rows_dropped"]) == (5, 4, 1)
    assert report["dropped"] == {"dropped_two": 1}
    assert report["changed"] == {"excited": 4}
    assert report["example_lines"]["dropped_two"] == [2]
    assert report["details"] == {"extra": 1}

    def failing(row, line):
        if line == 3:
            raise RuntimeError("boom")
        return row, []

    with pytest.raises(RuntimeError):
        transform_file(src, dst, failing)
    assert read_jsonl(dst)[0] == {"text": "0!"}  # previous output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "out.jsonl"]  # no temp left behind


def test_add_report_entry_appends(tmp_path):
    path = tmp_path / "data_report.json"
    add_report_entry(path, {"step": "a"})
    add_report_entry(path, {"step": "b"})
    assert json.loads(path.read_text())["steps"] == [{"step": "a"}, {"step": "b"}]


# --- unreadable rows: stop (file:line) or skip and count ---------------------------------------------------

GOOD_ROWS = [{"text": f"row number {w} of the file", "label": "a"} for w in ("one", "two", "four", "five")]


def _broken_file(tmp_path: Path) -> Path:
    lines = [json.dumps(r) for r in GOOD_ROWS]
    lines.insert(2, '{"text": oops}')  # line 3 of 5
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _written(report: dict) -> list[dict]:
    paths = report["outputs"].values() if "outputs" in report else [report["output"]]
    return [row for p in paths for row in read_jsonl(p) if not row.get("augmented")]


WRITING_TOOLS = {
    "clean": lambda src, out, **kw: clean_file(src, out / "o.jsonl", **kw),
    "dedup": lambda src, out, **kw: dedup_file(src, out / "o.jsonl", **kw),
    "pii": lambda src, out, **kw: redact_file(src, out / "o.jsonl", **kw),
    "split": lambda src, out, **kw: split_file(src, out, ratios=(0.5, 0.5), **kw),
    "augment": lambda src, out, **kw: augment_file(src, out / "o.jsonl", ops=("swap",), **kw),
}


@pytest.mark.parametrize("tool", sorted(WRITING_TOOLS))
def test_writing_tools_stop_or_skip_a_malformed_row(tool, tmp_path):
    src = _broken_file(tmp_path)
    run = WRITING_TOOLS[tool]
    with pytest.raises(DataError, match=re.escape(f"{src}:3: invalid JSON: Expecting value (column 10)")):
        run(src, tmp_path / "stop")
    assert not (tmp_path / "stop").exists() or not any((tmp_path / "stop").iterdir())  # nothing half-written

    report = run(src, tmp_path / "skip", on_bad_row="skip")
    assert sorted(_written(report), key=str) == sorted(GOOD_ROWS, key=str)  # every other row, unchanged
    assert report["bad_rows"] == {
        "on_bad_row": "skip",
        "skipped": 1,
        "examples": [f"{src}:3: invalid JSON: Expecting value (column 10)"],
    }
    if tool != "split":
        assert report["rows_in"] == 4
    with pytest.raises(DataError, match="on_bad_row must be 'stop' or 'skip', got 'ignore'"):
        run(src, tmp_path / "bad", on_bad_row="ignore")


def test_find_leakage_skips_bad_rows_in_every_file(tmp_path):
    src = _broken_file(tmp_path)
    val = tmp_path / "val.jsonl"
    val.write_text('[1, 2]\n{"text": "row number two of the file", "label": "a"}\n', encoding="utf-8")
    report = find_leakage(src, [val], tmp_path / "o.jsonl", on_bad_row="skip")
    assert report["dropped"] == {"leak_exact": 1} and report["rows_out"] == 3
    assert report["bad_rows"]["skipped"] == 2
    assert report["bad_rows"]["examples"] == [
        f"{val}:1: expected a JSON object, got array",
        f"{src}:3: invalid JSON: Expecting value (column 10)",
    ]


# --- pii -------------------------------------------------------------------------------------------------

PLANTED = {
    "EMAIL": "jane.doe+ml@example.co.uk",
    "PHONE": "+44 20 7946 0958",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "IP": "192.168.10.20",
    "NATIONAL_ID": "123-45-6789",
}
MORE_PLANTED = {  # second instances, other formats of the same types
    "PHONE": "(415) 555-2671",
    "CREDIT_CARD": "378282246310005",
    "IBAN": "GB82WEST12345698765432",
    "IP": "2001:db8::8a2e:370:7334",
    "NATIONAL_ID": "AB 12 34 56 C",
}
URL_USER, URL_PASS = "admin", "hunter2secret"


def test_redact_file_removes_every_planted_value(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Mail {PLANTED['EMAIL']} or call {PLANTED['PHONE']}."},
                {"role": "assistant", "content": f"Card {PLANTED['CREDIT_CARD']}, IBAN {PLANTED['IBAN']}."},
            ]
        },
        {"instruction": f"Server {PLANTED['IP']}", "input": f"SSN {PLANTED['NATIONAL_ID']}", "output": "ok"},
        {"text": f"db at postgres://{URL_USER}:{URL_PASS}@db.internal:5432/app", "label": "url"},
        {"prompt": " ".join(f"{k}={v}" for k, v in MORE_PLANTED.items()), "completion": "noted"},
        # Must survive: a Luhn-invalid card, a bad IBAN checksum, invalid SSN areas, years, prices, times.
        {"text": "order 4111 1111 1111 1112, DE89 3704 0044 0532 0130 01, 666-12-3456, 900-12-3456"},
        {"text": "In 2023 it cost $1,299.99 (1999-2005 prices), open 0900-1700, v1.2.3.4 at 12:30:45"},
    ]
    src = write_jsonl(tmp_path / "pii.jsonl", rows)
    report = redact_file(src, tmp_path / "out.jsonl")
    out_text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    for value in [*PLANTED.values(), *MORE_PLANTED.values(), URL_USER, URL_PASS]:
        assert value not in out_text
    out = read_jsonl(tmp_path / "out.jsonl")
    assert out[0]["messages"][0]["content"] == "Mail [EMAIL] or call [PHONE]."
    assert out[0]["messages"][1]["content"] == "Card [CREDIT_CARD], IBAN [IBAN]."
    assert out[1] == {"instruction": "Server [IP]", "input": "SSN [NATIONAL_ID]", "output": "ok"}
    assert out[2] == {"text": "db at postgres://[URL_CREDENTIALS]@db.internal:5432/app", "label": "url"}
    assert (
        out[3]["prompt"]
        == "PHONE=[PHONE] CREDIT_CARD=[CREDIT_CARD] IBAN=[IBAN] IP=[IP] NATIONAL_ID=[NATIONAL_ID]"
    )
    assert out[4] == rows[4] and out[5] == rows[5]
    assert report["details"]["occurrences"] == {
        "CREDIT_CARD": 2,
        "EMAIL": 1,
        "IBAN": 2,
        "IP": 2,
        "NATIONAL_ID": 2,
        "PHONE": 2,
        "URL_CREDENTIALS": 1,
    }
    assert report["changed"]["PHONE"] == 2 and report["changed"]["URL_CREDENTIALS"] == 1  # rows per type
    assert report["rows_in"] == report["rows_out"] == 6
    assert report["details"]["names"] == "not requested"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 415-555-2671 or 415.555.2671", "call [PHONE] or [PHONE]"),
        (
            "uk 020 7946 0958, mobile 07700 900123, fr 01 23 45 67 89",
            "uk [PHONE], mobile [PHONE], fr [PHONE]",
        ),
        ("de +4915112345678 / +1 (415) 555-2671", "de [PHONE] / [PHONE]"),
        ("+44 20 7946 0958 2023", "[PHONE] 2023"),
        ("nino AB123456C; not BG123456C", "nino [NATIONAL_ID]; not BG123456C"),
        ("git clone https://ghp_tok3n@github.com/o/r", "git clone https://[URL_CREDENTIALS]@github.com/o/r"),
        (
            "loopback ::1, code std::vector, word dead::beef",
            "loopback ::1, code std::vector, word dead::beef",
        ),
        ("list 100 200 3000, id 1234567890123", "list 100 200 3000, id 1234567890123"),
    ],
)
def test_redact_text_formats(text, expected):
    assert redact_text(text)[0] == expected


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert find_pii("nothing here at all") == []


def test_name_redaction_unavailable_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "Alice met Bob"}])
    report = redact_file(src, tmp_path / "b.jsonl", names=True)
    assert report["details"]["names"].startswith("unavailable: spaCy is not installed")
    assert read_jsonl(tmp_path / "b.jsonl") == [{"text": "Alice met Bob"}]


def test_name_redaction_uses_ner_when_present(tmp_path, monkeypatch):
    class Ent:
        def __init__(self, start, end, label):
            self.start_char, self.end_char, self.label_ = start, end, label

    def nlp(text):  # a stand-in pipeline: PERSON for capitalised "Alice", ORG for "Acme"
        ents = [
            Ent(text.find(w), text.find(w) + len(w), lab) for w, lab in [("Alice", "PERSON"), ("Acme", "ORG")]
        ]
        return types.SimpleNamespace(ents=[e for e in ents if e.start_char >= 0])

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=lambda name: nlp))
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "Alice of Acme: alice@acme.io"}])
    report = redact_file(src, tmp_path / "b.jsonl", names=True)
    assert read_jsonl(tmp_path / "b.jsonl") == [{"text": "[NAME] of Acme: [EMAIL]"}]
    assert report["details"]["occurrences"] == {"EMAIL": 1, "NAME": 1}
    assert report["details"]["names"] == "redacted with spaCy model en_core_web_sm"


# --- dedup -----------------------------------------------------------------------------------------------

BASE = (
    "the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch, "
    "and later that evening the whole family sits down together for a long dinner by the fire"
)
OTHER = "a completely different sentence about training small language models on a laptop in the evening"


def test_dedup_exact_and_near(tmp_path):
    rows = [
        {"text": BASE},
        {"text": OTHER},
        {"text": "  " + BASE.upper().replace(" ", "   ") + " \n"},
        {"text": BASE.replace("farmer", "shepherd")},  # one word changed
        {"text": "short and unrelated"},
    ]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = dedup_file(src, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == [rows[0], rows[1], rows[4]]
    assert report["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert report["example_lines"] == {"exact_duplicate": [3], "near_duplicate": [4]}
    (pair,) = report["details"]["near_pairs"]
    assert pair["line"] == 4 and pair["duplicate_of"] == 1 and 0.8 <= pair["similarity"] < 1.0

    exact_only = dedup_file(src, tmp_path / "exact.jsonl", near=False)
    assert exact_only["dropped"] == {"exact_duplicate": 1} and exact_only["rows_out"] == 4


def test_near_dup_threshold_is_respected(tmp_path):
    rows = [{"text": BASE}, {"text": BASE.replace("farmer", "shepherd")}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    strict = dedup_file(src, tmp_path / "o.jsonl", config=NearDupConfig(threshold=0.99))
    assert strict["rows_out"] == 2


def test_dedup_files_drops_rows_seen_in_an_earlier_file(tmp_path):
    a_rows = [{"text": BASE}, {"text": OTHER}, {"text": "only in the first file"}]
    b_rows = [
        {"text": "only in the second file"},
        {"text": BASE.upper()},  # exact duplicate of a:1
        {"text": OTHER.replace("laptop", "desktop")},  # near duplicate of a:2
        {"text": "only in the second file"},  # duplicate within b
        {"text": "  only in the FIRST file "},  # exact duplicate of a:3
    ]
    a = write_jsonl(tmp_path / "a.jsonl", a_rows)
    b = write_jsonl(tmp_path / "b.jsonl", b_rows)
    outs = [tmp_path / "out" / "a.jsonl", tmp_path / "out" / "b.jsonl"]
    report = dedup_files([a, b], outs)
    assert read_jsonl(outs[0]) == a_rows
    assert read_jsonl(outs[1]) == [b_rows[0]]
    assert (report["rows_in"], report["rows_out"], report["rows_dropped"]) == (8, 4, 4)
    assert report["dropped"] == {"cross_file_exact": 2, "cross_file_near": 1, "exact_duplicate": 1}
    first, second = report["files"]
    assert (first["input"], first["rows_out"], first["dropped"]) == (str(a), 3, {})
    assert second["dropped"] == {"cross_file_exact": 2, "cross_file_near": 1, "exact_duplicate": 1}
    assert second["example_lines"] == {
        "cross_file_exact": [2, 5],
        "cross_file_near": [3],
        "exact_duplicate": [4],
    }
    (pair,) = second["details"]["near_pairs"]
    assert (pair["line"], pair["duplicate_of"], pair["duplicate_of_file"]) == (3, 2, str(a))
    assert report["details"]["distinct_rows"] == 5  # texts seen, near duplicates included

    reverse = dedup_files([b, a], [tmp_path / "r" / "b.jsonl", tmp_path / "r" / "a.jsonl"])
    assert [f["rows_out"] for f in reverse["files"]] == [4, 0]  # the file listed first keeps its rows
    with pytest.raises(DataError, match="never modify their input"):
        dedup_files([a, b], [tmp_path / "x.jsonl", b])
    with pytest.raises(DataError, match="one output per input file: got 2 inputs, 1 outputs"):
        dedup_files([a, b], [tmp_path / "x.jsonl"])


def test_find_leakage_removes_train_rows_seen_in_eval(tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": BASE, "label": "a"}, {"text": "held out alone"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": OTHER, "label": "b"}])
    train_rows = [
        {"text": "an ordinary training row with nothing in common", "label": "a"},
        {"text": OTHER.upper(), "label": "b"},  # exact leak (after normalisation) of test
        {"text": BASE.replace("lazy", "sleepy"), "label": "a"},  # near leak of val
        {"text": "another ordinary row", "label": "b"},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    report = find_leakage(train, [val, test], tmp_path / "train.clean.jsonl")
    assert read_jsonl(tmp_path / "train.clean.jsonl") == [train_rows[0], train_rows[3]]
    assert report["dropped"] == {"leak_exact": 1, "leak_near": 1}
    assert report["details"]["per_eval_file"] == {str(test): 1, str(val): 1}
    exact, near = report["details"]["pairs"]
    assert (exact["train_line"], exact["eval_file"], exact["eval_line"], exact["kind"]) == (
        2,
        str(test),
        1,
        "exact",
    )
    assert (near["train_line"], near["eval_file"], near["eval_line"], near["kind"]) == (
        3,
        str(val),
        1,
        "near",
    )
    with pytest.raises(DataError):
        find_leakage(train, [val], val)


def test_contamination_ngram_overlap(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": "intro words then " + BASE + " and more"}, {"text": "what is two plus two"}],
    )
    evaluation = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {
                "text": "over the lazy dog while the farmer watches from somewhere else entirely"
            },  # shares 8-grams
            {"text": OTHER},  # clean
            {"text": "What is two plus TWO?"},  # short row equal to a whole training row
            {"text": "is two plus"},  # short, only a fragment of a training row: not counted
        ],
    )
    report = contamination(evaluation, train, n=8)
    assert (report["eval_rows"], report["train_rows"]) == (4, 2)
    assert report["contaminated_rows"] == 2 and report["fraction"] == 0.5
    assert report["short_eval_rows"] == 2
    first, short = report["rows"]
    # 12 eval words -> 5 eight-grams; "over ... watches" and "the lazy ... from" are in the training row
    assert (first["line"], first["shared_ngrams"], first["ngrams"]) == (1, 2, 5)
    assert (short["line"], short["shared_ngrams"]) == (3, 1)


# --- clean -----------------------------------------------------------------------------------------------


def test_clean_text_steps():
    assert clean_text("Fish &amp; chips<br/>today") == ("Fish & chips\ntoday", {"html_removed"})
    assert clean_text("<p>A</p><p>B</p>") == ("A\n\nB", {"html_removed", "whitespace_collapsed"})
    assert clean_text("List<String> x = a < b && c > d;")[0] == "List<String> x = a < b && c > d;"
    assert clean_text("?a=1&para=2")[0] == "?a=1&para=2"  # entity without ';' is not an entity
    assert clean_text("ﬁne ²") == ("ﬁne ²", set())
    assert clean_text("ﬁne ²", CleanOptions(unicode="NFKC")) == ("fine 2", {"unicode_normalized"})
    assert clean_text("e\u0301") == ("\u00e9", {"unicode_normalized"})
    assert clean_text("a\x00b\u200bc\r\nd") == ("abc\nd", {"control_chars_removed"})
    messy = "Hello   there \t\n\n\n\nList:\n    - item  one\n```\ndef f():\n    return  1\n```\n  "
    assert clean_text(messy) == (
        "Hello there\n\nList:\n    - item one\n```\ndef f():\n    return  1\n```",
        {"whitespace_collapsed"},
    )


def test_clean_file_counts_per_reason(tmp_path):
    rows = [
        {"instruction": "Say <b>hi</b>", "input": "", "output": "hi  there"},  # html + whitespace
        {"instruction": "Empty answer", "output": "   "},  # empty (answer blank)
        {"instruction": "No output key"},  # missing field
        {"instruction": "x", "output": "y"},  # too short (2 chars < 5)
        {"instruction": "Long " * 20, "output": "ok"},  # too long
        {"instruction": "Plain", "output": "fine\x07"},  # control char
    ]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    report = clean_file(src, tmp_path / "out.jsonl", CleanOptions(min_chars=5, max_chars=60))
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"instruction": "Say hi", "input": "", "output": "hi there"},
        {"instruction": "Plain", "output": "fine"},
    ]
    assert report["dropped"] == {"empty": 1, "missing_field": 1, "too_long": 1, "too_short": 1}
    assert report["changed"] == {"control_chars_removed": 1, "html_removed": 1, "whitespace_collapsed": 1}
    assert report["details"]["format"] == "instruction"

    filled = clean_file(src, tmp_path / "fill.jsonl", CleanOptions(missing="fill", drop_empty=False))
    out = read_jsonl(tmp_path / "fill.jsonl")
    # A missing answer is never filled (the row goes); every kept row lacking "input" gets "".
    assert filled["rows_out"] == 5 and filled["changed"]["filled_field"] == 4
    assert filled["dropped"] == {"missing_field": 1}
    assert out[1] == {"instruction": "Empty answer", "output": "", "input": ""}


def test_clean_fill_rule_per_field_kind(tmp_path):
    rows = [
        {
            "prompt": "Q1",
            "completion": "A1",
            "tier": "gold",
            "stars": 4,
            "tags": ["x"],
            "id": "r1",
            "ok": True,
        },
        {
            "prompt": None,
            "completion": "A2",
            "tier": "free",
            "stars": 2,
            "tags": None,
            "id": "r2",
            "ok": None,
        },
        {"prompt": "Q3", "completion": "A3", "tier": "", "stars": None, "id": "r3", "ok": True},
        {
            "prompt": "Q4",
            "completion": "A4",
            "tier": "free",
            "stars": 5,
            "tags": ["y"],
            "id": None,
            "ok": False,
        },
        {"prompt": "Q5", "completion": None, "tier": "gold", "stars": 1, "tags": [], "id": "r5", "ok": True},
    ]
    src = write_jsonl(tmp_path / "m.jsonl", rows)
    report = clean_file(src, tmp_path / "out.jsonl", CleanOptions(missing="fill"))
    out = read_jsonl(tmp_path / "out.jsonl")
    # Stars 4, 2, 5, 1 -> lower median 2; tier: "gold" and "free" tie at 2, "gold" seen first;
    # ids stay missing.
    assert out[1] == {
        "prompt": "",
        "completion": "A2",
        "tier": "free",
        "stars": 2,
        "tags": [],
        "id": "r2",
        "ok": True,
    }
    assert out[2] == {
        "prompt": "Q3",
        "completion": "A3",
        "tier": "gold",
        "stars": 2,
        "id": "r3",
        "ok": True,
        "tags": [],
    }
    assert out[3]["id"] is None and len(out) == 4  # Q5 has no answer: dropped
    assert report["details"]["fill_rules"] == {
        "tier": "most common 'gold'",
        "stars": "median 2",
        "tags": "empty list",
        "id": "not filled (every value differs: an id or free text)",
        "ok": "most common True",
    }
    assert report["dropped"] == {"missing_field": 1} and report["changed"]["filled_field"] == 2
    hi = {"role": "user", "content": "Hi"}
    chat = [
        {
            "messages": [{"role": "system", "content": None}, hi, {"role": "assistant", "content": "Yo"}],
            "n": "3",
        },
        {"messages": [hi, {"role": "assistant", "content": "Hey"}], "n": ""},
        {"messages": [hi, {"role": "assistant", "content": "Ho"}], "n": "10"},
    ]
    clean_file(
        write_jsonl(tmp_path / "c.jsonl", chat), tmp_path / "c.out.jsonl", CleanOptions(missing="fill")
    )
    filled_chat = read_jsonl(tmp_path / "c.out.jsonl")
    assert filled_chat[0]["messages"][0] == {"role": "system", "content": ""}
    assert filled_chat[1]["n"] == "3"  # numeric strings: the lower median of "3" and "10" by value


CALL = [{"type": "function", "function": {"name": "now", "arguments": "{}"}}]


def test_clean_chat_keeps_roles_and_drops_blank_reply(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi&nbsp;there"}, {"role": "assistant", "content": "Yo "}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<br>"}]},
        {"label": 1},
        {
            "messages": [
                {"role": "user", "content": " "},
                {"role": "assistant", "content": None, "tool_calls": CALL},
            ]
        },
    ]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    report = clean_file(src, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Yo"}]},
        {
            "messages": [
                {"role": "user", "content": ""},
                {"role": "assistant", "content": None, "tool_calls": CALL},
            ]
        },
    ]
    assert report["dropped"] == {"empty": 1, "missing_field": 1}


# --- split -----------------------------------------------------------------------------------------------


def _labelled_rows(n_a: int = 60, n_b: int = 40) -> list[dict]:
    return [
        {"text": f"row {i}", "label": "a" if i < n_a else "b", "user": f"u{i % 17}"} for i in range(n_a + n_b)
    ]


def test_apportion_exact():
    assert apportion(60, (0.8, 0.1, 0.1)) == [48, 6, 6]
    assert apportion(5, (0.8, 0.1, 0.1)) == [4, 1, 0]
    assert apportion(100, (0.71, 0.29)) == [71, 29]


def test_split_stratified_exact_and_reproducible(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", _labelled_rows())
    report = split_file(src, tmp_path / "one", stratify_by="label", seed=3)
    assert report["rows"] == {"train": 80, "validation": 10, "test": 10}
    assert report["label_counts"] == {
        "train": {"a": 48, "b": 32},
        "validation": {"a": 6, "b": 4},
        "test": {"a": 6, "b": 4},
    }
    parts = {name: read_jsonl(path) for name, path in report["outputs"].items()}
    assert Counter(r["label"] for r in parts["validation"]) == {"a": 6, "b": 4}
    all_out = sorted(r["text"] for rows in parts.values() for r in rows)
    assert all_out == sorted(r["text"] for r in _labelled_rows())

    again = split_file(src, tmp_path / "two", stratify_by="label", seed=3)
    other = split_file(src, tmp_path / "three", stratify_by="label", seed=4)
    for name in ("train", "validation", "test"):
        assert Path(again["outputs"][name]).read_bytes() == Path(report["outputs"][name]).read_bytes()
    assert Path(other["outputs"]["test"]).read_bytes() != Path(report["outputs"]["test"]).read_bytes()


def test_split_groups_never_cross(tmp_path):
    src = write_jsonl(tmp_path / "g.jsonl", _labelled_rows())
    report = split_file(src, tmp_path / "out", group_by="user", seed=0)
    owner: dict[str, str] = {}
    for name, path in report["outputs"].items():
        for row in read_jsonl(path):
            assert owner.setdefault(row["user"], name) == name
    assert len(owner) == 17
    assert sum(report["rows"].values()) == 100 and sum(report["groups"].values()) == 17
    # 17 groups of 5-6 rows dealt towards 80/10/10 (seed 0): whole groups, so not exactly 80/10/10
    assert report["rows"] == {"train": 77, "validation": 12, "test": 11}
    assert report["groups"] == {"train": 13, "validation": 2, "test": 2}

    both = split_file(src, tmp_path / "both", group_by="user", stratify_by="label", ratios=(0.5, 0.5))
    assert set(both["outputs"]) == {"train", "validation"}
    seen: dict[str, str] = {}
    for name, path in both["outputs"].items():
        for row in read_jsonl(path):
            assert seen.setdefault(row["user"], name) == name


def test_split_errors(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}, {"text": "b", "label": "x"}])
    with pytest.raises(DataError, match=r"s.jsonl:1: row has no 'label'"):
        split_file(src, tmp_path / "o", stratify_by="label")
    with pytest.raises(DataError, match="sum to 1"):
        split_file(src, tmp_path / "o", ratios=(0.5, 0.4))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
