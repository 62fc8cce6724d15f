"""Prediction inputs: the training row shapes, and questions without answers.

    examples = read_prompts("questions.jsonl")   # one per row, in file order; None for a blank question

Accepted: chat rows ending with the user's turn (or a reply, which is not read), ``prompt`` rows,
``instruction`` (+``input``) rows without ``output``, ``text`` rows (``.txt`` lines), classification rows.
The row parsing is :mod:`tunesmith.data.formats`' own (same validation, same ``path:line`` errors); this
module is its prediction half, kept apart for size.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.formats import (
    Example,
    _chat_messages,
    _instruction_user,
    _iter_raw,
    _rest,
    _RowError,
    _string,
)
from tunesmith.errors import DataError

_EXPECTED_PROMPT_KEYS = (
    "messages (chat, ending with the user's question or with a reply), instruction (+input, +output), "
    "prompt (+completion), text (one question), text+label (classification)"
)


def detect_prompt_format(row: dict) -> str:
    """Name a prediction input's shape from its keys: the training formats plus their prompt-only forms.

    ``chat`` (the last turn may be ``user``), ``instruction`` (``output`` optional), ``prompt``
    (``completion`` optional), ``classification`` (``text`` + ``label``), ``question`` (``text`` alone: a
    ``.txt`` line). Keys holding null do not count.

    Raises:
        DataError: The keys match no shape; the message lists the keys seen and those accepted.
    """
    keys = {key for key, value in row.items() if value is not None}
    if "messages" in keys:
        return "chat"
    if "instruction" in keys:
        return "instruction"
    if "prompt" in keys:
        return "prompt"
    if {"text", "label"} <= keys:
        return "classification"
    if "text" in keys:
        return "question"
    hint = "; preference pairs (DPO) are not supported" if "preferred_output" in keys else ""
    raise DataError(
        f"cannot tell the data format from the keys {sorted(keys)}; expected {_EXPECTED_PROMPT_KEYS}{hint}"
    )


def _prompt_example(row: dict, shape: str) -> Example | None:
    """A prediction input as an example whose prompt :func:`~tunesmith.data.render.render_prompt` renders.

    Rows with an answer (a training row) keep their conversation, so the prompt is the one training saw
    before the answer; prompt-only rows become a chat ending with the user's question. None: the question is
    blank (it gets an empty answer).
    """
    if shape == "chat":
        messages = _chat_messages(row)
        last = messages[-1]
        if last["role"] == "system":
            raise _RowError("the conversation holds only a system turn; add the user's question after it")
        if last["role"] == "user" and not (last.get("content") or "").strip():
            return None
        return Example("", 0, "chat", messages=messages, extra=_rest(row, {"messages"}))
    if shape == "classification":  # the label prompt is rendered around the text; the label is not read
        text = _string(row, "text")
        if not text.strip():
            return None
        return Example("", 0, "classification", text=text, extra=_rest(row, {"text", "label"}))
    if shape == "instruction":
        user, used = _instruction_user(row, _string(row, "instruction")), {"instruction", "input", "output"}
    elif shape == "prompt":
        user, used = _string(row, "prompt"), {"prompt", "completion"}
    else:
        user, used = _string(row, "text"), {"text"}
    if not user.strip():
        return None
    return Example("", 0, "chat", messages=[{"role": "user", "content": user}], extra=_rest(row, used))


def read_prompts(path: str | Path) -> list[Example | None]:
    """Prediction inputs, one per row in file order (a ``.txt`` line, blank or not, is one question).

    Accepts every training shape (the answer is not read) and the prompt-only ones: chat rows ending with a
    user turn, ``prompt`` rows, ``instruction`` (+``input``) rows without ``output``, ``text`` rows. The
    shape is detected per row, so one file may mix them. A blank question is None (answer it with an empty
    line, so output line i still answers input line i).

    Raises:
        DataError: Missing/empty/unreadable file, or ``path:line: what is wrong`` for the first bad row
            (prediction never skips a row: that would shift every answer after it).
    """
    examples: list[Example | None] = []
    for line, row in _iter_raw(path):
        if isinstance(row, DataError):
            raise row
        try:
            example = _prompt_example(row, detect_prompt_format(row))
        except (DataError, _RowError) as err:
            raise DataError(f"{path}:{line}: {err}") from None
        if example is not None:
            example.source, example.line = str(path), line
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples
