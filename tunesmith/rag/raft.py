"""RAFT training rows: a question with its oracle chunk among retrieved hard-negative distractors.

Each row's user turn is :func:`~tunesmith.rag.prompt.render_rag_prompt` over the oracle chunk plus ``k``
distractors (the top BM25 chunks of *other* documents for the question, so they look relevant), shuffled;
in exactly ``round(p_no_oracle * n)`` rows the oracle is left out (and one more distractor takes its place),
which teaches the model not to trust the context blindly. The assistant turn quotes the oracle sentence that
best matches the answer, then states the answer (RAFT, Zhang et al. 2024).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import DataError
from tunesmith.rag.chunk import Chunk, split_sentences
from tunesmith.rag.index import RetrievalIndex
from tunesmith.rag.prompt import render_raft_answer, render_rag_prompt


@dataclass(frozen=True)
class RaftSettings:
    """``k`` distractors per row, share ``p_no_oracle`` of rows without the oracle, shuffle ``seed``."""

    k: int = 3
    p_no_oracle: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise DataError(f"raft k={self.k}: need at least one distractor")
        if not 0.0 <= self.p_no_oracle <= 1.0:
            raise DataError(f"raft p={self.p_no_oracle}: the share without oracle must be in [0, 1]")


def _words(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'()").lower() for w in text.split()} - {""}


def oracle_chunk(index: RetrievalIndex, question: str, answer: str, doc_id: str) -> Chunk:
    """The chunk of ``doc_id`` that contains ``answer`` (case-insensitive), else the one BM25 ranks best
    for question + answer.

    Raises:
        DataError: the index has no chunk of ``doc_id``.
    """
    own = [c for c in index.chunks if c.doc_id == doc_id]
    if not own:
        raise DataError(f"oracle document {doc_id!r} is not in the index; index it or fix the row's oracle")
    for chunk in own:
        if answer.strip().lower() in chunk.text.lower():
            return chunk
    ranked = [c for c, _ in index.search(f"{question} {answer}", k=len(index.chunks)) if c.doc_id == doc_id]
    return ranked[0] if ranked else own[0]


def best_quote(chunk: Chunk, question: str, answer: str) -> str:
    """The oracle sentence to quote: one containing the answer, else the one sharing most words with
    question + answer. Always a substring of ``chunk.text``."""
    sentences = split_sentences(chunk.text) or [chunk.text]
    for sentence in sentences:
        if answer.strip().lower() in sentence.lower():
            return sentence
    target = _words(f"{question} {answer}")
    return max(sentences, key=lambda s: len(_words(s) & target))


def build_raft_rows(
    qa: Sequence[dict[str, Any]], index: RetrievalIndex, settings: RaftSettings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """RAFT chat rows for ``qa`` rows (``question``, ``answer``, ``oracle`` doc id), and a report.

    Each row carries ``meta`` (oracle chunk id, context chunk ids, whether the oracle is in) for audits.

    Raises:
        DataError: a row lacks a field (row number), or too few distractors can be retrieved.
    """
    rng = random.Random(settings.seed)
    n_without = round(settings.p_no_oracle * len(qa))
    without = set(rng.sample(range(len(qa)), n_without))
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(qa):
        missing = [f for f in ("question", "answer", "oracle") if not str(item.get(f, "")).strip()]
        if missing:
            raise DataError(f"RAFT row {i + 1}: missing {', '.join(missing)} (need question, answer, oracle)")
        question, answer, doc_id = str(item["question"]), str(item["answer"]), str(item["oracle"])
        oracle = oracle_chunk(index, question, answer, doc_id)
        n_distract = settings.k + (1 if i in without else 0)
        distractors = [c for c, _ in index.search(question, k=n_distract, exclude_doc=doc_id)]
        if len(distractors) < n_distract:
            # too few lexical hits: fill with other documents' chunks, still never the oracle's document
            pool = [c for c in index.chunks if c.doc_id != doc_id and c not in distractors]
            distractors += rng.sample(pool, min(len(pool), n_distract - len(distractors)))
        if len(distractors) < n_distract:
            raise DataError(f"RAFT row {i + 1}: the index has too few other chunks for k={settings.k}")
        context = distractors if i in without else [oracle, *distractors]
        rng.shuffle(context)
        quote = best_quote(oracle, question, answer)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": render_rag_prompt(question, context)},
                    {"role": "assistant", "content": render_raft_answer(quote, answer)},
                ],
                "meta": {
                    "oracle_chunk": oracle.id,
                    "context": [c.id for c in context],
                    "oracle_in_context": i not in without,
                },
            }
        )
    report = {
        "step": "raft",
        "rows_in": len(qa),
        "rows_out": len(rows),
        "k_distractors": settings.k,
        "p_no_oracle": settings.p_no_oracle,
        "rows_without_oracle": n_without,
        "distractors": f"{index.retriever} hard negatives from other documents",
        "seed": settings.seed,
        "index_settings": index.settings,
    }
    return rows, report
