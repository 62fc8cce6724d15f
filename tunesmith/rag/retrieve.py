"""Put retrieved chunks into a prediction input, in the prompt shape RAFT trained on; and which index a
command on a run retrieves from (``--index``, else the run's ``rag.index``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.config import RunConfig
from tunesmith.data.formats import Example
from tunesmith.rag.prompt import chunk_ids_of, is_rag_prompt

if TYPE_CHECKING:  # bm25s loads only where retrieval runs, not where a run's settings are read
    from tunesmith.rag.index import RetrievalIndex


def run_index(
    cfg: RunConfig, index: str | Path | None, k: int | None, use_run_index: bool = True
) -> tuple[str | Path | None, int]:
    """The index and chunk count a command on the run ``cfg`` retrieves with: an explicit ``index`` wins over
    the run's ``rag.index`` (ignored when ``use_run_index`` is False, ``--no-index``), an explicit ``k`` over
    ``rag.k``."""
    if index is None and use_run_index:
        index = cfg.rag.index
    return index, cfg.rag.k if k is None else k


def _question(ex: Example) -> tuple[int | None, str]:
    """The position of the last user turn (None for a text example) and its text."""
    if ex.kind == "chat" and ex.messages:
        for i in range(len(ex.messages) - 1, -1, -1):
            if ex.messages[i].get("role") == "user":
                return i, str(ex.messages[i].get("content") or "")
    return None, ex.text or ""


def given_chunks(ex: Example) -> list[str] | None:
    """The chunk ids of an input that is already a retrieval prompt (``rag contexts`` rows), else None."""
    _, question = _question(ex)
    return chunk_ids_of(question) if is_rag_prompt(question) else None


def with_retrieval(ex: Example, index: RetrievalIndex, k: int = 4) -> tuple[Example, list[str]]:
    """A copy of ``ex`` whose last user turn (or text) is replaced by the retrieval prompt for it, and the
    retrieved chunk ids. The question is the turn's text as given (the input example is not modified). An
    input that already is a retrieval prompt is kept as it is (retrieving again would nest prompts); its ids
    are the chunks it holds."""
    given = given_chunks(ex)
    if given is not None:
        return ex, given
    from tunesmith.rag.index import retrieve_prompt

    turn, question = _question(ex)
    prompt, ids = retrieve_prompt(index, question, k)
    if turn is None:
        return dataclasses.replace(ex, text=prompt), ids
    messages = [dict(m) for m in ex.messages or []]
    messages[turn]["content"] = prompt
    return dataclasses.replace(ex, messages=messages), ids
