"""Rows for preference and RL fine-tuning: pairs (DPO, reward models), unpaired (KTO), prompts (GRPO).

Each row format is recognised by its keys (keys holding null do not count)::

    shape       format                  row
    preference  openai_dpo              {"input": {"messages": [...], "tools"?: [...]},
                                         "preferred_output": [assistant turns], "non_preferred_output": [...]}
                prompt_chosen_rejected  {"prompt": str | messages, "chosen": str | messages, "rejected": ...}
                chosen_rejected         {"chosen": messages, "rejected": messages}: the prompt is the run of
                                        messages both start with, and must end with a user or tool turn
    unpaired    kto                     {"prompt": str | messages, "completion": str | messages,
                                         "label": true | false}
    prompt      chat_prompt             {"messages": [... ending with a user or tool turn], ...}
                prompt                  {"prompt": str | messages, ...}

A string prompt is one user turn; a string reply is one assistant turn. The example's ``messages`` is the
prompt (it ends with a user or tool turn); ``chosen`` / ``rejected`` hold the replies, assistant turns only.
Other fields stay in ``extra`` (OpenAI's ``input.tools`` too, which rendering reads; graders read
``{{item.answer}}`` from there). A pair whose two replies are identical teaches nothing: it is dropped and
counted, not an error::

    source = read_preference_source("pairs.jsonl", "preference")
    source.counts  # rows_read, malformed_skipped, identical_pairs_dropped, kept
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.data.formats import (
    Example,
    SourceData,
    _chat_messages,
    _first_format,
    _iter_raw,
    _json_type,
    _rest,
    _RowError,
    check_on_bad_row,
    message_list,
)
from tunesmith.errors import DataError

SHAPES = ("preference", "unpaired", "prompt")
"""What a preference / RL objective reads; also the :class:`Example` ``kind`` of the rows read."""
SHAPE_OF_FORMAT = {
    "openai_dpo": "preference",
    "prompt_chosen_rejected": "preference",
    "chosen_rejected": "preference",
    "kto": "unpaired",
    "chat_prompt": "prompt",
    "prompt": "prompt",
}
_EXPECTED = {
    "preference": "input+preferred_output+non_preferred_output (OpenAI DPO), prompt+chosen+rejected, "
    "or chosen+rejected conversations",
    "unpaired": "prompt+completion+label (true/false)",
    "prompt": "messages ending with a user turn, or prompt",
}
_PROMPT_END = ("user", "tool")


def _value(row: dict, key: str, where: str = "") -> Any:
    value = row.get(key)
    if value is None:
        seen = ", ".join(sorted(str(k) for k, v in row.items() if v is not None)) or "none"
        raise _RowError(f"{where}missing key {key!r} (keys seen: {seen})")
    return value


def _turns(value: Any, key: str, role: str) -> tuple[list[dict[str, Any]], bool]:
    """A string as one ``role`` turn, or a validated message list; True when it was a string."""
    if isinstance(value, str):
        return [{"role": role, "content": value}], True
    if not isinstance(value, list):
        raise _RowError(f"key {key!r} must be a string or an array of messages, got {_json_type(value)}")
    return message_list(value, key), False


def _is_empty(message: dict[str, Any]) -> bool:
    return not message.get("tool_calls") and not (message.get("content") or "").strip()


def _check_prompt(messages: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Check that ``messages`` (validated, found under ``key``) can be a prompt, and return them.

    Raises:
        _RowError: It starts with an assistant turn, does not end with a user or tool turn, or its last turn
            is empty.
    """
    if messages[0]["role"] == "assistant":
        raise _RowError(f"{key}[0].role: the prompt starts with an assistant turn; put a user turn first")
    last = len(messages) - 1
    if messages[last]["role"] not in _PROMPT_END:
        raise _RowError(
            f"{key}[{last}].role: a prompt must end with a user or tool turn (the model writes the reply), "
            f"got {messages[last]['role']!r}"
        )
    if _is_empty(messages[last]):
        raise _RowError(f"{key}[{last}].content: empty")
    return messages


def _prompt(value: Any, key: str) -> list[dict[str, Any]]:
    messages, was_text = _turns(value, key, "user")
    if was_text and not value.strip():
        raise _RowError(f"{key}: empty")
    return _check_prompt(messages, key)


def _check_reply(messages: list[dict[str, Any]], key: str, offset: int = 0) -> list[dict[str, Any]]:
    """Every turn of a reply is the assistant's and says something; ``offset`` numbers them as in the row."""
    for i, message in enumerate(messages, offset):
        if message["role"] != "assistant":
            raise _RowError(f"{key}[{i}].role: expected 'assistant', got {message['role']!r}")
        if _is_empty(message):
            raise _RowError(f"{key}[{i}].content: empty")
    return messages


def _reply(value: Any, key: str) -> list[dict[str, Any]]:
    messages, was_text = _turns(value, key, "assistant")
    if was_text and not value.strip():
        raise _RowError(f"{key}: empty")
    return _check_reply(messages, key)


# ------------------------------------------------------------------------------------------- row formats


def _openai_dpo(row: dict) -> Example:
    given = _value(row, "input")
    if not isinstance(given, dict):
        raise _RowError(f"key 'input' must be an object with 'messages', got {_json_type(given)}")
    given = {key: value for key, value in given.items() if value is not None}
    prompt = _check_prompt(
        message_list(_value(given, "messages", "input: "), "input.messages"), "input.messages"
    )
    chosen = _reply(_value(row, "preferred_output"), "preferred_output")
    rejected = _reply(_value(row, "non_preferred_output"), "non_preferred_output")
    # input.tools (and any other input key) sit in extra, where rendering looks for tools.
    extra = {
        **_rest(row, {"input", "preferred_output", "non_preferred_output"}),
        **_rest(given, {"messages"}),
    }
    return Example("", 0, "preference", messages=prompt, chosen=chosen, rejected=rejected, extra=extra)


def _prompt_chosen_rejected(row: dict) -> Example:
    prompt = _prompt(_value(row, "prompt"), "prompt")
    chosen, rejected = _reply(_value(row, "chosen"), "chosen"), _reply(_value(row, "rejected"), "rejected")
    extra = _rest(row, {"prompt", "chosen", "rejected"})
    return Example("", 0, "preference", messages=prompt, chosen=chosen, rejected=rejected, extra=extra)


def _conversation(row: dict, key: str) -> list[dict[str, Any]]:
    value = _value(row, key)
    if not isinstance(value, list):
        raise _RowError(
            f"key {key!r} must be a whole conversation (an array of messages) when there is no 'prompt' key, "
            f"got {_json_type(value)}"
        )
    return message_list(value, key)


def _chosen_rejected(row: dict) -> Example:
    """TRL's implicit prompt: the messages both conversations start with."""
    chosen, rejected = _conversation(row, "chosen"), _conversation(row, "rejected")
    extra = _rest(row, {"chosen", "rejected"})
    if chosen == rejected:  # dropped and counted by the reader
        return Example("", 0, "preference", messages=chosen, chosen=[], rejected=[], extra=extra)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise _RowError(
            "chosen[0] and rejected[0] differ: without a 'prompt' key the prompt is the messages both "
            "conversations start with, and these share none"
        )
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) == shared:
            raise _RowError(f"{key} has no reply after the {shared} messages it shares with the other")
    if chosen[shared - 1]["role"] not in _PROMPT_END:
        raise _RowError(
            f"chosen[{shared - 1}].role: chosen and rejected share their first {shared} messages, the last "
            f"one {chosen[shared - 1]['role']!r}; the shared prompt must end with a user or tool turn"
        )
    prompt = _check_prompt(chosen[:shared], "chosen")
    return Example(
        "",
        0,
        "preference",
        messages=prompt,
        chosen=_check_reply(chosen[shared:], "chosen", shared),
        rejected=_check_reply(rejected[shared:], "rejected", shared),
        extra=extra,
    )


def _kto(row: dict) -> Example:
    prompt = _prompt(_value(row, "prompt"), "prompt")
    completion = _reply(_value(row, "completion"), "completion")
    label = _value(row, "label")
    if not isinstance(label, bool):
        raise _RowError(
            f"key 'label' must be a JSON boolean (true: a desirable completion, false: an undesirable one), "
            f"got {_json_type(label)}"
        )
    extra = _rest(row, {"prompt", "completion", "label"})
    return Example("", 0, "unpaired", messages=prompt, chosen=completion, desirable=label, extra=extra)


def _chat_prompt(row: dict) -> Example:
    prompt = _check_prompt(_chat_messages(row), "messages")
    return Example("", 0, "prompt", messages=prompt, extra=_rest(row, {"messages"}))


def _prompt_only(row: dict) -> Example:
    prompt = _prompt(_value(row, "prompt"), "prompt")
    return Example("", 0, "prompt", messages=prompt, extra=_rest(row, {"prompt"}))


_CONVERTERS: dict[str, Callable[[dict], Example]] = {
    "openai_dpo": _openai_dpo,
    "prompt_chosen_rejected": _prompt_chosen_rejected,
    "chosen_rejected": _chosen_rejected,
    "kto": _kto,
    "chat_prompt": _chat_prompt,
    "prompt": _prompt_only,
}


# ------------------------------------------------------------------------------------------- detection


def _format_from_keys(keys: set[str], expected: str) -> str | None:
    if expected == "prompt":  # any row with a prompt can be an RL prompt; its other keys go to the grader
        return "chat_prompt" if "messages" in keys else "prompt" if "prompt" in keys else None
    if keys & {"preferred_output", "non_preferred_output"}:
        return "openai_dpo"
    if keys & {"chosen", "rejected"}:
        return "prompt_chosen_rejected" if "prompt" in keys else "chosen_rejected"
    if {"completion", "label"} <= keys:
        return "kto"
    if "messages" in keys:
        return "chat_prompt"
    if "prompt" in keys and "completion" not in keys:
        return "prompt"
    return None


def detect_preference_format(row: dict, expected: str = "auto") -> str:
    """Name a preference / RL row's format (a key of :data:`SHAPE_OF_FORMAT`) from its keys.

    Args:
        row: The parsed row.
        expected: ``auto`` or the shape wanted (one of :data:`SHAPES`); with ``prompt`` any row with
            ``messages`` or ``prompt`` is a prompt, its other keys kept for the grader.

    Raises:
        DataError: The keys match no format, or one of another shape than ``expected``.
    """
    keys = {key for key, value in row.items() if value is not None}
    fmt = _format_from_keys(keys, expected)
    wanted = _EXPECTED.get(expected, "; ".join(f"{shape}: {shown}" for shape, shown in _EXPECTED.items()))
    if fmt is None:
        hint = ""
        if {"prompt", "completion"} <= keys:
            hint = (
                "; prompt+completion rows without a label are supervised rows (`objective: {name: sft}`); "
                "add `label: true/false` to each for KTO"
            )
        raise DataError(f"cannot tell the data shape from the keys {sorted(keys)}; expected {wanted}{hint}")
    if expected != "auto" and SHAPE_OF_FORMAT[fmt] != expected:
        raise DataError(
            f"expected {expected} rows ({wanted}) but the keys {sorted(keys)} make "
            f"{SHAPE_OF_FORMAT[fmt]} rows ({fmt})"
        )
    return fmt


def to_preference_example(row: dict, fmt: str, source: str, line: int) -> Example:
    """Validate one row of a known format (a key of :data:`SHAPE_OF_FORMAT`) into an :class:`Example`.

    Raises:
        DataError: ``"{source}:{line}: "`` followed by what is wrong and the key it is in, e.g.
            ``pairs.jsonl:3: preferred_output[0].role: expected 'assistant', got 'user'``.
    """
    if fmt not in _CONVERTERS:
        raise DataError(f"unknown preference data format {fmt!r} (known: {', '.join(_CONVERTERS)})")
    try:
        example = _CONVERTERS[fmt](row)
    except _RowError as err:
        raise DataError(f"{source}:{line}: {err}") from None
    example.source, example.line = source, line
    return example


def is_identical_pair(example: Example) -> bool:
    """A pair whose replies are the same: no preference to learn (dropped and counted, not an error)."""
    return example.kind == "preference" and example.chosen == example.rejected


def read_preference_source(path: str | Path, expected: str = "auto", on_bad_row: str = "stop") -> SourceData:
    """Read and validate a whole file of preference pairs, unpaired (KTO) rows or prompts.

    Args:
        path: The data file (JSONL, JSON, CSV or Parquet; see :func:`tunesmith.data.formats.iter_rows`).
        expected: The shape wanted (``preference``, ``unpaired``, ``prompt``) or ``auto`` (from the first
            readable row). Every row is read in the first readable row's format.
        on_bad_row: ``stop`` raises on the first malformed row; ``skip`` drops and counts it.

    Returns:
        The examples (``kind`` is the shape), ``format`` (a key of :data:`SHAPE_OF_FORMAT`) and ``counts``:
        ``rows_read``, ``malformed_skipped``, ``identical_pairs_dropped`` and ``kept``.

    Raises:
        DataError: Missing/empty file, rows of another shape, or (with ``stop``) a malformed row
            (``path:line: key: what is wrong``).
    """
    if expected != "auto" and expected not in SHAPES:
        raise DataError(f"unknown preference data shape {expected!r} (known: auto, {', '.join(SHAPES)})")
    check_on_bad_row(on_bad_row)
    rows = list(_iter_raw(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    fmt = _first_format(path, rows, on_bad_row, lambda row: detect_preference_format(row, expected))
    counts = {"rows_read": len(rows), "malformed_skipped": 0, "identical_pairs_dropped": 0, "kept": 0}
    examples: list[Example] = []
    for line, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            example = to_preference_example(row, fmt, str(path), line)
        except DataError:
            if on_bad_row == "stop":
                raise
            counts["malformed_skipped"] += 1
            continue
        if is_identical_pair(example):
            counts["identical_pairs_dropped"] += 1
        else:
            examples.append(example)
    counts["kept"] = len(examples)
    return SourceData(examples, counts, fmt, None)
