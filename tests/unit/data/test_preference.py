"""Preference pairs, unpaired (KTO) rows and RL prompts: parsing, exact errors, tokenizing and preparing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATASETS
from tunesmith.config import DataConfig
from tunesmith.data.formats import Example, read_examples, read_source
from tunesmith.data.preference import (
    PairSplit,
    PromptSplit,
    UnpairedSplit,
    prepare_preferences,
    render_preference_prompt,
)
from tunesmith.data.preference_formats import (
    detect_preference_format,
    read_preference_source,
    to_preference_example,
)
from tunesmith.data.render import IGNORE_INDEX, render_prompt
from tunesmith.errors import DataError

ORCA = DATASETS / "openai-format" / "orca-dpo-pairs" / "pairs.jsonl"
ORCA_ROWS = 284  # `wc -l` says 283: the last row has no newline


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _openai(question: str, good: str, bad: str, **extra: object) -> dict:
    return {
        "input": {"messages": [_user(question)]},
        "preferred_output": [_bot(good)],
        "non_preferred_output": [_bot(bad)],
        **extra,
    }


def _error(row: dict, fmt: str) -> str:
    with pytest.raises(DataError) as info:
        to_preference_example(row, fmt, "f.jsonl", 3)
    return str(info.value)


# ------------------------------------------------------------------------------------------- row shapes


def test_openai_dpo_row_keeps_tools_and_other_fields_in_extra(tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "add", "parameters": {}}}
    row = _openai("2+2?", "4", "5", id="r1")
    row["input"] = {"messages": [{"role": "system", "content": "Be brief."}, _user("2+2?")], "tools": [tool]}
    source = read_preference_source(_jsonl(tmp_path / "p.jsonl", [row]), "preference")
    assert source.format == "openai_dpo"
    assert source.counts == {"rows_read": 1, "malformed_skipped": 0, "identical_pairs_dropped": 0, "kept": 1}
    ex = source.examples[0]
    assert (ex.kind, ex.source, ex.line) == ("preference", str(tmp_path / "p.jsonl"), 1)
    assert ex.messages == [{"role": "system", "content": "Be brief."}, _user("2+2?")]
    assert (ex.chosen, ex.rejected, ex.desirable) == ([_bot("4")], [_bot("5")], None)
    assert ex.extra == {"id": "r1", "tools": [tool]}


@pytest.mark.parametrize(
    ("row", "prompt", "chosen", "rejected"),
    [
        ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}, [_user("Hi?")], "Hello.", "Go away."),
        (
            {"prompt": [_user("Hi?")], "chosen": [_bot("Hello.")], "rejected": [_bot("Go away.")]},
            [_user("Hi?")],
            "Hello.",
            "Go away.",
        ),
        (  # TRL's implicit prompt: the messages both conversations start with
            {
                "chosen": [_user("a"), _bot("b"), _user("c"), _bot("yes")],
                "rejected": [_user("a"), _bot("b"), _user("c"), _bot("no")],
            },
            [_user("a"), _bot("b"), _user("c")],
            "yes",
            "no",
        ),
    ],
)
def test_chosen_rejected_shapes(row: dict, prompt: list, chosen: str, rejected: str) -> None:
    fmt = detect_preference_format(row)
    assert fmt == ("prompt_chosen_rejected" if "prompt" in row else "chosen_rejected")
    ex = to_preference_example(row, fmt, "f.jsonl", 3)
    assert (ex.kind, ex.messages, ex.extra) == ("preference", prompt, {})
    assert (ex.chosen, ex.rejected) == ([_bot(chosen)], [_bot(rejected)])


def test_kto_rows_need_a_boolean_label(tmp_path: Path) -> None:
    rows = [
        {"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": [_user("3+3?")], "completion": [_bot("7")], "label": False, "source": "x"},
    ]
    source = read_preference_source(_jsonl(tmp_path / "k.jsonl", rows), "auto")
    assert source.format == "kto"
    first, second = source.examples
    assert (first.kind, first.messages, first.chosen, first.desirable) == (
        "unpaired",
        [_user("2+2?")],
        [_bot("4")],
        True,
    )
    assert (second.desirable, second.extra, second.rejected) == (False, {"source": "x"}, None)
    assert _error({"prompt": "q", "completion": "a", "label": "true"}, "kto") == (
        "f.jsonl:3: key 'label' must be a JSON boolean (true: a desirable completion, false: an undesirable "
        "one), got string"
    )
    assert _error({"prompt": "q", "completion": "a", "label": 1}, "kto").endswith("got integer")


def test_prompt_completion_without_label_stays_supervised(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "q", "completion": "a", "label": "math"}])
    assert read_source(path).format == "prompt_completion"  # a non-boolean label is just an extra field
    with pytest.raises(DataError, match=r"keys \['completion', 'prompt'\]; .*add `label: true/false`"):
        detect_preference_format({"prompt": "q", "completion": "a"}, "unpaired")


def test_prompt_rows_keep_every_other_field_for_graders(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "system", "content": "Solve."}, _user("2+2?")], "answer": "4", "level": 1}
    source = read_preference_source(_jsonl(tmp_path / "rl.jsonl", [chat]), "prompt")
    assert source.format == "chat_prompt"
    ex = source.examples[0]
    assert (ex.kind, ex.messages, ex.extra) == ("prompt", chat["messages"], {"answer": "4", "level": 1})
    plain = read_preference_source(
        _jsonl(tmp_path / "p.jsonl", [{"prompt": "3+3?", "answer": "6"}]), "prompt"
    )
    assert plain.format == "prompt"
    assert (plain.examples[0].messages, plain.examples[0].extra) == ([_user("3+3?")], {"answer": "6"})


# ------------------------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        (
            {**_openai("q", "a", "b"), "preferred_output": [_user("a")]},
            "openai_dpo",
            "preferred_output[0].role: expected 'assistant', got 'user'",
        ),
        (
            {"input": {"messages": [_user("q")]}, "preferred_output": [_bot("a")]},
            "openai_dpo",
            "missing key 'non_preferred_output' (keys seen: input, preferred_output)",
        ),
        (
            {**_openai("q", "a", "b"), "input": {"messages": [_user("q"), _bot("x")]}},
            "openai_dpo",
            "input.messages[1].role: a prompt must end with a user or tool turn (the model writes the "
            "reply), got 'assistant'",
        ),
        (
            {**_openai("q", "a", "b"), "non_preferred_output": [_bot(" ")]},
            "openai_dpo",
            "non_preferred_output[0].content: empty",
        ),
        (
            {"input": "q", "preferred_output": "a", "non_preferred_output": "b"},
            "openai_dpo",
            "key 'input' must be an object with 'messages', got string",
        ),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "prompt_chosen_rejected", "chosen: empty"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt_chosen_rejected", "prompt: empty"),
        (
            {"prompt": [_user("q"), _bot("x")], "chosen": "a", "rejected": "b"},
            "prompt_chosen_rejected",
            "prompt[1].role: a prompt must end with a user or tool turn (the model writes the reply), got "
            "'assistant'",
        ),
        (
            {"chosen": [_user("q"), _bot("a"), _user("u")], "rejected": [_user("q"), _bot("a"), _user("v")]},
            "chosen_rejected",
            "chosen[1].role: chosen and rejected share their first 2 messages, the last one 'assistant'; the "
            "shared prompt must end with a user or tool turn",
        ),
        (
            {"chosen": [_user("q"), _bot("a")], "rejected": [_user("p"), _bot("a")]},
            "chosen_rejected",
            "chosen[0] and rejected[0] differ: without a 'prompt' key the prompt is the messages both "
            "conversations start with, and these share none",
        ),
        (
            {"chosen": "a", "rejected": "b"},
            "chosen_rejected",
            "key 'chosen' must be a whole conversation (an array of messages) when there is no 'prompt' key, "
            "got string",
        ),
        ({"prompt": "q", "completion": "a"}, "kto", "missing key 'label' (keys seen: completion, prompt)"),
        (
            {"messages": [{"role": "system", "content": "s"}]},
            "chat_prompt",
            "messages[0].role: a prompt must end with a user or tool turn (the model writes the reply), got "
            "'system'",
        ),
    ],
)
def test_bad_rows_name_the_line_and_the_key(row: dict, fmt: str, message: str) -> None:
    assert _error(row, fmt) == f"f.jsonl:3: {message}"


def test_a_bad_row_in_a_file_stops_with_file_and_line_or_is_skipped_and_counted(tmp_path: Path) -> None:
    rows = [_openai("q", "a", "b"), {**_openai("q", "a", "b"), "preferred_output": [_user("a")]}, "{broken"]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:2: preferred_output\[0\]\.role: expected 'assistant'"):
        read_preference_source(path, "preference")
    source = read_preference_source(path, "preference", on_bad_row="skip")
    assert source.counts == {"rows_read": 3, "malformed_skipped": 2, "identical_pairs_dropped": 0, "kept": 1}


def test_identical_pairs_are_dropped_and_counted(tmp_path: Path) -> None:
    same = [_user("q"), _bot("a")]
    rows = [
        _openai("q", "a", "a"),
        {"prompt": "q", "chosen": "yes", "rejected": "yes"},  # read in the first row's format: malformed
        _openai("q", "a", "b"),
    ]
    source = read_preference_source(_jsonl(tmp_path / "p.jsonl", rows), on_bad_row="skip")
    assert source.counts == {"rows_read": 3, "malformed_skipped": 1, "identical_pairs_dropped": 1, "kept": 1}
    implicit = [{"chosen": same, "rejected": same}, {"chosen": same, "rejected": [_user("q"), _bot("b")]}]
    source = read_preference_source(_jsonl(tmp_path / "i.jsonl", implicit))
    assert source.counts["identical_pairs_dropped"] == 1
    assert [ex.line for ex in source.examples] == [2]


def test_rows_of_another_shape_are_refused(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "rl.jsonl", [{"messages": [_user("q")], "answer": "4"}])
    with pytest.raises(DataError, match=rf"^{path}:1: expected preference rows \(.*\) but the keys "):
        read_preference_source(path, "preference")
    with pytest.raises(DataError, match="unknown preference data shape 'pairs'"):
        read_preference_source(path, "pairs")


def test_supervised_reading_points_preference_and_rl_rows_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: .*train them with `objective: \{name: dpo\}`"):
        read_examples(ORCA)
    prompts = _jsonl(tmp_path / "rl.jsonl", [{"prompt": "q", "answer": "4"}])
    with pytest.raises(DataError, match=r"RL prompts \(`objective: \{name: grpo\}`\) or prediction inputs$"):
        read_examples(prompts)
    chats = _jsonl(tmp_path / "chat.jsonl", [{"messages": [_user("q")]}])
    with pytest.raises(
        DataError, match=r"chat\.jsonl:1: last turn is 'user'.*RL prompts, `objective: \{name: grpo"
    ):
        read_examples(chats)
    kto = _jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": False}])
    with pytest.raises(DataError, match=r"KTO rows: use `objective: \{name: dpo, loss: kto\}`"):
        read_examples(kto)


# ------------------------------------------------------------------------------------------- tokenizing


def _cfg(path: Path, **settings: object) -> DataConfig:
    return DataConfig(train=str(path), validation_fraction=0.0, **settings)


def _assert_prompt_prefix(prompt: list[int], ids: list[int], labels: list[int]) -> None:
    n = len(prompt)
    assert ids[:n] == prompt
    assert labels[:n] == [IGNORE_INDEX] * n
    assert labels[n] == ids[n]  # the reply's first token is trained
    assert len(ids) == len(labels)


def test_the_real_orca_file_reads_fully_and_pairs_share_their_prompt(default_tokenizer) -> None:
    source = read_preference_source(ORCA, "preference")
    assert source.counts == {
        "rows_read": ORCA_ROWS,
        "malformed_skipped": 0,
        "identical_pairs_dropped": 0,
        "kept": ORCA_ROWS,
    }
    data = prepare_preferences(_cfg(ORCA, max_length=4096), default_tokenizer, 0, "preference")
    train = data.train
    assert isinstance(train, PairSplit) and len(train) == ORCA_ROWS and data.validation is None
    assert data.report["splits"]["train"]["dropped_prompt_mismatch"] == 0
    chosen_lengths = []
    for k, ex in enumerate(train.examples):
        prompt = render_preference_prompt(ex, default_tokenizer, None)
        _assert_prompt_prefix(prompt, train.chosen_ids[k], train.chosen_labels[k])
        _assert_prompt_prefix(prompt, train.rejected_ids[k], train.rejected_labels[k])
        chosen_lengths.append(len(train.chosen_ids[k]) - len(prompt))
    report = data.report
    assert report["format"] == "openai_dpo" and len(report["files"]["train"]["sha256"]) == 64
    mean = round(sum(chosen_lengths) / len(chosen_lengths), 2)
    assert report["splits"]["train"]["lengths"]["chosen"] == {"mean": mean, "max": max(chosen_lengths)}


def _pairs_file(tmp_path: Path) -> Path:
    long = " ".join(f"word{i}" for i in range(60))
    return _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "Short?", "chosen": "Yes.", "rejected": "No."},  # fits
            {"prompt": "Long answer?", "chosen": long, "rejected": "No."},  # chosen over the limit
            {"prompt": "Long question " + long, "chosen": "Yes.", "rejected": "No."},  # prompt alone too long
        ],
    )


def test_truncate_cuts_the_reply_tail_and_drops_prompts_with_no_room(
    tmp_path: Path, default_tokenizer
) -> None:
    path = _pairs_file(tmp_path)
    data = prepare_preferences(_cfg(path, max_length=64), default_tokenizer, 0, "preference")
    train = data.train
    assert isinstance(train, PairSplit) and [ex.line for ex in train.examples] == [1, 2]
    counts = data.report["splits"]["train"]
    assert (counts["truncated"], counts["dropped_overlong"], counts["kept"]) == (1, 1, 2)
    assert len(train.chosen_ids[1]) == 64 and len(train.chosen_labels[1]) == 64
    prompt = render_preference_prompt(train.examples[1], default_tokenizer, None)
    _assert_prompt_prefix(prompt, train.chosen_ids[1], train.chosen_labels[1])
    assert train.rejected_ids[1][: len(prompt)] == prompt and len(train.rejected_ids[1]) < 64
    dropped = prepare_preferences(
        _cfg(path, max_length=64, overlong="drop"), default_tokenizer, 0, "preference"
    )
    counts = dropped.report["splits"]["train"]
    assert (counts["truncated"], counts["dropped_overlong"], counts["kept"]) == (0, 2, 1)


def test_a_prompt_whose_last_token_merges_into_the_reply_is_dropped_and_counted(
    tmp_path: Path, default_tokenizer
) -> None:
    rows = [
        {"prompt": "q", "chosen": "\n\nYes.", "rejected": "No."},
        {"prompt": "q", "chosen": "Yes.", "rejected": "No."},
    ]
    data = prepare_preferences(_cfg(_jsonl(tmp_path / "p.jsonl", rows)), default_tokenizer, 0, "preference")
    assert data.report["splits"]["train"]["dropped_prompt_mismatch"] == 1
    assert [ex.line for ex in data.train.examples] == [2]


def test_system_prompt_and_prefix_go_into_the_prompt(tmp_path: Path, default_tokenizer) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Bye."}])
    data = prepare_preferences(
        _cfg(path, system_prompt="Be kind.", prefix="Q: "), default_tokenizer, 0, "preference"
    )
    text = default_tokenizer.decode(data.train.chosen_ids[0])
    assert text.startswith("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nQ: Hi?<|im_end|>")
    trained = [t for t in data.train.rejected_labels[0] if t != IGNORE_INDEX]
    assert default_tokenizer.decode(trained) == "Bye.<|im_end|>"


def test_unpaired_split(tmp_path: Path, default_tokenizer) -> None:
    rows = [
        {"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": "2+2?", "completion": "5", "label": False},
        {"prompt": "3+3?", "completion": "6", "label": True},
    ]
    data = prepare_preferences(_cfg(_jsonl(tmp_path / "k.jsonl", rows)), default_tokenizer, 0, "unpaired")
    train = data.train
    assert isinstance(train, UnpairedSplit) and len(train) == 3
    assert train.desirable == [True, False, True]
    counts = data.report["splits"]["train"]
    assert (counts["desirable"], counts["undesirable"], data.report["format"]) == (2, 1, "kto")
    prompt = render_preference_prompt(train.examples[1], default_tokenizer, None)
    _assert_prompt_prefix(prompt, train.input_ids[1], train.labels[1])
    assert default_tokenizer.decode([t for t in train.labels[1] if t != IGNORE_INDEX]) == "5<|im_end|>"


def test_prompt_split_matches_render_prompt_and_drops_prompts_without_room(
    tmp_path: Path, default_tokenizer
) -> None:
    rows = [{"prompt": "2+2?", "answer": "4"}, {"prompt": " ".join(["long"] * 80), "answer": "x"}]
    data = prepare_preferences(
        _cfg(_jsonl(tmp_path / "rl.jsonl", rows), max_length=64), default_tokenizer, 0, "prompt"
    )
    train = data.train
    assert isinstance(train, PromptSplit) and len(train) == 1
    chat = Example("f", 1, "chat", messages=[_user("2+2?")])
    assert train.prompt_ids[0] == render_prompt(chat, default_tokenizer, None, "{text}")
    assert default_tokenizer.decode(train.prompt_ids[0]).endswith("<|im_start|>assistant\n")
    assert train.examples[0].extra == {"answer": "4"}
    counts = data.report["splits"]["train"]
    assert (counts["dropped_overlong"], counts["kept"]) == (1, 1)
    assert counts["lengths"]["prompt"]["max"] == len(train.prompt_ids[0])


# ------------------------------------------------------------------------------------------- splits


def _many_pairs(tmp_path: Path, n: int = 20) -> Path:
    return _jsonl(
        tmp_path / "many.jsonl", [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": "b"} for i in range(n)]
    )


def test_validation_fraction_holds_out_the_same_rows_for_the_same_seed(
    tmp_path: Path, default_tokenizer
) -> None:
    cfg = DataConfig(train=str(_many_pairs(tmp_path)), validation_fraction=0.2)

    def held(seed: int) -> list[int]:
        data = prepare_preferences(cfg, default_tokenizer, seed, "preference")
        assert data.validation is not None and len(data.train) + len(data.validation) == 20
        assert data.report["validation"] == "held_out"
        assert data.report["splits"]["train"]["held_out_for_validation"] == 4
        return [ex.line for ex in data.validation.examples]

    first = held(0)
    assert len(first) == 4 and first == held(0) and first != held(1)


def test_validation_and_test_files_must_hold_the_same_shape(tmp_path: Path, default_tokenizer) -> None:
    train = _many_pairs(tmp_path, 3)
    valid = _jsonl(tmp_path / "v.jsonl", [_openai("q", "a", "b")])
    data = prepare_preferences(
        DataConfig(train=str(train), validation=str(valid), test=str(valid)),
        default_tokenizer,
        0,
        "preference",
    )
    assert (len(data.train), len(data.validation), len(data.test), data.report["validation"]) == (
        3,
        1,
        1,
        "file",
    )
    assert data.report["splits"]["validation"]["format"] == "openai_dpo"
    prompts = _jsonl(tmp_path / "rl.jsonl", [{"prompt": "q"}])
    with pytest.raises(DataError, match=r"rl\.jsonl:1: expected preference rows"):
        prepare_preferences(
            DataConfig(train=str(train), validation=str(prompts)), default_tokenizer, 0, "preference"
        )


def test_nothing_to_train_on_says_why(tmp_path: Path, default_tokenizer) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [_openai("q", "a", "a")])
    with pytest.raises(
        DataError, match=r"no usable preference examples \(1 rows_read, 0 malformed_skipped, 1 identical"
    ):
        prepare_preferences(_cfg(path), default_tokenizer, 0, "preference")
    with pytest.raises(DataError, match=r"^data\.train is not set"):
        prepare_preferences(DataConfig(), default_tokenizer, 0, "prompt")
