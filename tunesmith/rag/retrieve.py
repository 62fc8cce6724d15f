"""Put retrieved chunks into a prediction input, in the prompt shape RAFT trained on."""

from __future__ import annotations

import dataclasses

from tunesmith.data.formats import Example
from tunesmith.rag.index import BM25Index, retrieve_prompt


def with_retrieval(ex: Example, index: BM25Index, k: int = 4) -> tuple[Example, list[str]]:
    """A copy of ``ex`` whose last user turn (or text) is replaced by the retrieval prompt for it, and the
    retrieved chunk ids. The question is the turn's text as given (the input example is not modified)."""
    if ex.kind == "chat" and ex.messages:
        messages = [dict(m) for m in ex.messages]
        for message in reversed(messages):
            if message.get("role") == "user":
                prompt, ids = retrieve_prompt(index, str(message.get("content") or ""), k)
                message["content"] = prompt
                return dataclasses.replace(ex, messages=messages), ids
    prompt, ids = retrieve_prompt(index, ex.text or "", k)
    return dataclasses.replace(ex, text=prompt), ids
