"""Chat rendering and loss masks on the real default tokenizer: exact texts and exact labelled spans."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import DATASETS
from tunesmith.data.formats import Example, read_examples
from tunesmith.data.render import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    ensure_chat_template,
    reference_text,
    render_example,
    render_prompt,
)
from tunesmith.errors import DataError

LABEL_PROMPT = "Classify the text.\nText: {text}\nLabel:"
DEFAULT_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)
TOOL_CALLING = DATASETS / "openai-format" / "tool-calling" / "train.jsonl"


def _chat(*turns: tuple[str, str], **extra: object) -> Example:
    return Example(
        "f.jsonl", 1, "chat", messages=[{"role": r, "content": c} for r, c in turns], extra=dict(extra)
    )


def _labelled(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def _segments(labels: list[int]) -> int:
    """Number of contiguous labelled runs."""
    flags = [label != IGNORE_INDEX for label in labels]
    return sum(1 for k, flag in enumerate(flags) if flag and (k == 0 or not flags[k - 1]))


@pytest.fixture
def plain_tokenizer(default_tokenizer):
    """The default tokenizer without a chat template (what a base model ships)."""
    tokenizer = copy.deepcopy(default_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


def test_single_turn_exact_text_and_mask(default_tokenizer) -> None:
    ex = _chat(("user", "Capital of France?"), ("assistant", "Paris."))
    ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
    assert len(ids) == len(labels)
    assert default_tokenizer.decode(ids) == (
        DEFAULT_SYSTEM
        + "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    assert _labelled(default_tokenizer, ids, labels) == "Paris.<|im_end|>"
    assert _segments(labels) == 1
    # The end-of-turn token is learned; the newline the template writes after it is not.
    eos = default_tokenizer.eos_token_id
    assert ids[-2] == eos and labels[-2] == eos
    assert default_tokenizer.decode([ids[-1]]) == "\n" and labels[-1] == IGNORE_INDEX
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels, strict=True))


def test_system_prompt_is_added_only_when_missing(default_tokenizer) -> None:
    ex = _chat(("user", "Hi"), ("assistant", "Hello."))
    ids, labels = render_example(ex, default_tokenizer, "Be brief.", None, LABEL_PROMPT)
    assert default_tokenizer.decode(ids).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi"
    )
    assert _labelled(default_tokenizer, ids, labels) == "Hello.<|im_end|>"
    own = _chat(("system", "Own."), ("user", "Hi"), ("assistant", "Hello."))
    ids, _ = render_example(own, default_tokenizer, "Be brief.", None, LABEL_PROMPT)
    assert default_tokenizer.decode(ids).startswith("<|im_start|>system\nOwn.<|im_end|>\n<|im_start|>user")
    assert "Be brief." not in default_tokenizer.decode(ids)


def test_multi_turn_labels_every_assistant_turn_and_no_user_turn(default_tokenizer) -> None:
    ex = _chat(
        ("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?"), ("assistant", "Paris.")
    )
    ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
    assert _labelled(default_tokenizer, ids, labels) == "Hello!<|im_end|>Paris.<|im_end|>"
    assert _segments(labels) == 2
    assert sum(1 for label in labels if label == default_tokenizer.eos_token_id) == 2


def test_weight_zero_turn_is_not_learned(default_tokenizer) -> None:
    ex = _chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital?"), ("assistant", "Paris."))
    ex.messages[1]["weight"] = 0
    ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
    assert _labelled(default_tokenizer, ids, labels) == "Paris.<|im_end|>"
    assert "weight" not in default_tokenizer.decode(ids)


def test_unknown_message_keys_stay_out_of_the_text(default_tokenizer) -> None:
    ex = _chat(("user", "Hi"), ("assistant", "Hello."))
    ex.messages[0]["name"] = "zanzibar"
    ids, _ = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
    assert "zanzibar" not in default_tokenizer.decode(ids)


def test_render_prompt_ends_with_the_generation_prompt(default_tokenizer) -> None:
    ex = _chat(
        ("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?"), ("assistant", "Paris.")
    )
    prompt = render_prompt(ex, default_tokenizer, None, LABEL_PROMPT)
    text = default_tokenizer.decode(prompt)
    assert text.endswith(
        "Hello!<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
    assert ids[: len(prompt)] == prompt  # the prompt is exactly what precedes the last answer in training
    assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] != IGNORE_INDEX


def test_classification_renders_label_name_as_the_answer(default_tokenizer) -> None:
    ex = Example("f.csv", 2, "classification", text="I love it", label=1)
    ids, labels = render_example(ex, default_tokenizer, None, ["neg", "pos"], LABEL_PROMPT)
    assert default_tokenizer.decode(ids) == (
        DEFAULT_SYSTEM + "<|im_start|>user\nClassify the text.\nText: I love it\nLabel:<|im_end|>\n"
        "<|im_start|>assistant\npos<|im_end|>\n"
    )
    assert _labelled(default_tokenizer, ids, labels) == "pos<|im_end|>"
    prompt = render_prompt(ex, default_tokenizer, None, LABEL_PROMPT)
    assert default_tokenizer.decode(prompt).endswith("Label:<|im_end|>\n<|im_start|>assistant\n")
    assert reference_text(ex, ["neg", "pos"]) == "pos"
    with pytest.raises(DataError, match=r"label_prompt .* must contain \{text\}"):
        render_example(ex, default_tokenizer, None, ["neg", "pos"], "Classify {text} as {label}")


def test_text_examples_learn_every_token_and_end_with_eos(default_tokenizer) -> None:
    ex = Example("c.txt", 1, "text", text="Hello world")
    ids, labels = render_example(ex, default_tokenizer, "ignored", None, LABEL_PROMPT)
    assert default_tokenizer.decode(ids) == "Hello world<|im_end|>"
    assert labels == ids and ids[-1] == default_tokenizer.eos_token_id
    assert reference_text(ex, None) == "Hello world"
    with pytest.raises(DataError, match=r"c\.txt:1: a 'text' example has no prompt"):
        render_prompt(ex, default_tokenizer, None, LABEL_PROMPT)


def test_tool_calling_rows_render_with_tools_in_the_system_turn(default_tokenizer) -> None:
    examples, _ = read_examples(TOOL_CALLING)
    ex = examples[0]
    ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
    expected_call = (
        '<tool_call>[{"name": "get_last_nday_stock_price", "arguments": {"symbol": "BAC", "period": "1mo"}}]'
        "</tool_call>"
    )
    assert _labelled(default_tokenizer, ids, labels) == expected_call + "<|im_end|>"
    assert reference_text(ex, None) == expected_call
    text = default_tokenizer.decode(ids)
    system_turn = text.split("<|im_end|>")[0]
    assert "<tools>\n" in system_turn and '"name": "get_current_stock_price"' in system_turn
    assert "call_1" not in text  # the call id is bookkeeping, not something to learn


def test_every_tool_calling_row_labels_exactly_its_reference(default_tokenizer) -> None:
    examples, _ = read_examples(TOOL_CALLING)
    for ex in examples:
        ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
        assert _labelled(default_tokenizer, ids, labels) == reference_text(ex, None) + "<|im_end|>", ex.line


def test_template_that_reads_tool_calls_gets_them_structured(plain_tokenizer) -> None:
    plain_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}"
        "{% if m.tool_calls %}{% set f = m.tool_calls[0].function %}CALL {{ f.name }}({{ f.arguments.x }})"
        "{% endif %}{% if tools %}[{{ tools | length }} tools]{% endif %}|{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 7}'}}
    ex = Example(
        "f",
        1,
        "chat",
        messages=[{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": [call]}],
    )
    ex.extra["tools"] = [{"type": "function", "function": {"name": "f"}}]
    ids, labels = render_example(ex, plain_tokenizer, None, None, LABEL_PROMPT)
    assert plain_tokenizer.decode(ids) == "user:go[1 tools]|assistant:CALL f(7)[1 tools]|"
    assert _labelled(plain_tokenizer, ids, labels) == "CALL f(7)[1 tools]|"


def test_tokenizer_without_template_gets_chatml(plain_tokenizer) -> None:
    ensure_chat_template(plain_tokenizer)
    assert plain_tokenizer.chat_template == CHATML_TEMPLATE
    ex = _chat(("user", "Capital of France?"), ("assistant", "Paris."))
    ids, labels = render_example(ex, plain_tokenizer, None, None, LABEL_PROMPT)
    assert plain_tokenizer.decode(ids) == (
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    assert _labelled(plain_tokenizer, ids, labels) == "Paris.<|im_end|>"
    own = "{{ 'custom' }}"
    plain_tokenizer.chat_template = own
    ensure_chat_template(plain_tokenizer)
    assert plain_tokenizer.chat_template == own


def test_template_that_is_not_prefix_stable_is_refused(plain_tokenizer) -> None:
    plain_tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    )
    ex = _chat(("user", "Hi"), ("assistant", "Hello."))
    with pytest.raises(DataError, match=r"f\.jsonl:1: the chat template is not prefix-stable"):
        render_example(ex, plain_tokenizer, None, None, LABEL_PROMPT)


def test_gsm8k_masks_match_the_reference_answers(default_tokenizer) -> None:
    examples, _ = read_examples(DATASETS / "openai-format" / "gsm8k-chat" / "validation.jsonl")
    for ex in examples:
        ids, labels = render_example(ex, default_tokenizer, None, None, LABEL_PROMPT)
        assert _labelled(default_tokenizer, ids, labels) == reference_text(ex, None) + "<|im_end|>", ex.line
        prompt = render_prompt(ex, default_tokenizer, None, LABEL_PROMPT)
        assert ids[: len(prompt)] == prompt
