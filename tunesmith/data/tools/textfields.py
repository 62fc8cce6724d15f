"""The user-visible text of a row, whatever its shape, found and rewritten in one place.

Every data tool (clean, dedup, PII redaction, contamination checks) works on "the text of a row". Rows come in
five shapes (chat, instruction, prompt/completion, text, classification); this module knows where the text
lives in each so the tools do not::

    text_fields({"instruction": "Sum", "input": "1 2", "output": "3", "id": 7})
    # [("instruction", "Sum"), ("input", "1 2"), ("output", "3")]
    map_text(row, str.upper)   # a new row; ``id`` and any label stay as they were

Labels, ids, roles and metadata are never text: redacting or normalising them would corrupt the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Keys whose string values are text a model reads or writes. Order is the order a reader meets them.
TEXT_KEYS: tuple[str, ...] = ("system", "instruction", "input", "output", "prompt", "completion", "text")
CHAT_KEY = "messages"


def _content_fields(content: Any, prefix: str) -> list[tuple[str, str]]:
    """Text in one message's ``content``: a string or OpenAI-style ``[{"type": "text", ...}]`` parts."""
    if isinstance(content, str):
        return [(prefix, content)]
    out: list[tuple[str, str]] = []
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append((f"{prefix}.{j}.text", part["text"]))
    return out


def text_fields(row: dict[str, Any]) -> list[tuple[str, str]]:
    """List the user-visible text of a row as ``(path, text)`` pairs.

    Args:
        row: One data row of any supported shape.

    Returns:
        Pairs in reading order. Paths are dotted (``messages.2.content``) so reports can say where a change
        happened. Non-string values (labels, ids, ``None``) are skipped.
    """
    out: list[tuple[str, str]] = []
    messages = row.get(CHAT_KEY)
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            if isinstance(msg, dict):
                out.extend(_content_fields(msg.get("content"), f"{CHAT_KEY}.{i}.content"))
    for key in TEXT_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            out.append((key, value))
    return out


def _map_content(content: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(content, str):
        return fn(content)
    if isinstance(content, list):
        return [
            {**part, "text": fn(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content


def map_text(row: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """Return a new row with ``fn`` applied to every field :func:`text_fields` lists.

    The input row is not modified; keys that are not text (labels, ids, roles, metadata) are carried over
    unchanged and in their original order.

    Args:
        row: One data row of any supported shape.
        fn: String to string function (a cleaner, a redactor).

    Returns:
        The rewritten row.
    """
    new = dict(row)
    messages = row.get(CHAT_KEY)
    if isinstance(messages, list):
        new[CHAT_KEY] = [
            {**msg, "content": _map_content(msg.get("content"), fn)}
            if isinstance(msg, dict) and "content" in msg
            else msg
            for msg in messages
        ]
    for key in TEXT_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            new[key] = fn(value)
    return new


def row_text(row: dict[str, Any], sep: str = "\n") -> str:
    """All text of a row joined by ``sep`` (for n-gram and similarity checks that see the row as one text)."""
    return sep.join(text for _, text in text_fields(row))
