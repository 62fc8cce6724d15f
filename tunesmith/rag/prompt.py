"""The one retrieval prompt: a question plus retrieved chunks rendered into the user turn.

``data raft`` (training), ``predict``/``chat``/``serve --index`` and ``rag compare`` all call
:func:`render_rag_prompt`, so the prompt a RAFT model was trained on and the one it is asked at inference
cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tunesmith.rag.chunk import Chunk

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
INSTRUCTION = (
    "Answer the question using the documents below. Quote the sentence that answers it between "
    f"{BEGIN_QUOTE} and {END_QUOTE}, then give the answer."
)


def render_rag_prompt(question: str, chunks: Sequence[Chunk]) -> str:
    """The user turn for ``question`` with ``chunks`` in the given order, each headed by its chunk id."""
    docs = "\n\n".join(f"[{c.id}]\n{c.text}" for c in chunks)
    return f"{INSTRUCTION}\n\n{docs}\n\nQuestion: {question.strip()}"


def is_rag_prompt(text: str) -> bool:
    """True when ``text`` is already a rendered retrieval prompt (``rag contexts`` writes them)."""
    return text.startswith(f"{INSTRUCTION}\n\n") and "\n\nQuestion: " in text


def chunk_ids_of(prompt: str) -> list[str]:
    """The chunk ids a rendered retrieval prompt holds, in order (the ``[id]`` heading each chunk)."""
    body = prompt[len(INSTRUCTION) : prompt.rfind("\n\nQuestion: ")]
    return re.findall(r"\n\n\[([^\]\n]+)\]\n", body)


def render_raft_answer(quote: str, answer: str) -> str:
    """The assistant turn RAFT trains on: the quoted oracle sentence, then the answer."""
    return f"{BEGIN_QUOTE}{quote}{END_QUOTE}\nAnswer: {answer.strip()}"


def extract_quotes(text: str) -> list[str]:
    """Every span between the quote markers in a model's answer (for citation checks)."""
    quotes = []
    for part in text.split(BEGIN_QUOTE)[1:]:
        if END_QUOTE in part:
            quotes.append(part.split(END_QUOTE, 1)[0].strip())
    return quotes


def question_of(prompt: str) -> str:
    """The question back out of a rendered retrieval prompt (for lints and audits)."""
    return prompt.rsplit("\n\nQuestion: ", 1)[-1]
