"""Score RAG / fine-tuning / RAFT systems side by side on the same held-out questions.

A *system* is a list of predictions for the questions (base closed-book, base + RAG, SFT closed-book,
SFT + RAG, RAFT + RAG); each is scored on answer accuracy (contains, exact match, token F1 on the answer
part), and — where it was given retrieved chunks — retrieval recall@k (the oracle document among them) and
citation correctness (every ``##begin_quote##`` span is text of the oracle document). The imperfect retriever
(:func:`drop_oracle`) removes the oracle's chunks from a fixed share of retrieved sets, the setting RAFT's
distractor training is meant for.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.evaluate.metrics import exact_match, normalize_answer, token_f1
from tunesmith.rag.prompt import extract_quotes

SYSTEMS: tuple[str, ...] = ("base closed-book", "base + RAG", "SFT closed-book", "SFT + RAG", "RAFT + RAG")


@dataclass(frozen=True)
class Question:
    """A held-out question, its reference answer, the oracle document id and (for RAG systems) the ids and
    texts of the chunks the retriever gave it."""

    question: str
    answer: str
    oracle: str
    retrieved: tuple[str, ...] = ()
    oracle_text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def answer_part(prediction: str) -> str:
    """The text after the last ``Answer:`` (RAFT's format), else the whole prediction, stripped."""
    return prediction.rsplit("Answer:", 1)[-1].strip()


def contains(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference occurs in the normalised prediction as whole words."""
    ref = normalize_answer(reference)
    if not ref:
        return 0.0
    return float(re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", normalize_answer(prediction)) is not None)


def citation_correct(prediction: str, oracle_text: str) -> float | None:
    """1.0 when the prediction quotes and every quote is in the oracle text (whitespace-normalised), 0.0
    when a quote is not or nothing is quoted; None when there is no oracle text to check against."""
    if not oracle_text:
        return None
    quotes = extract_quotes(prediction)
    flat = " ".join(oracle_text.split())
    return float(bool(quotes) and all(" ".join(q.split()) in flat for q in quotes))


def doc_of(chunk_id: str) -> str:
    """``"velmora#3"`` -> ``"velmora"``."""
    return chunk_id.rsplit("#", 1)[0]


def score_system(predictions: Sequence[str], questions: Sequence[Question], rag: bool) -> dict[str, float]:
    """Mean metrics of one system over the questions (same order); recall@k and citation only with ``rag``.

    Raises:
        ValueError: predictions and questions differ in number.
    """
    if len(predictions) != len(questions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    n = max(len(questions), 1)
    scores = {
        "contains": sum(contains(p, q.answer) for p, q in zip(predictions, questions, strict=True)) / n,
        "exact_match": sum(
            exact_match(answer_part(p), q.answer) for p, q in zip(predictions, questions, strict=True)
        )
        / n,
        "token_f1": sum(
            token_f1(answer_part(p), q.answer) for p, q in zip(predictions, questions, strict=True)
        )
        / n,
    }
    if rag:
        scores["recall_at_k"] = sum(q.oracle in {doc_of(c) for c in q.retrieved} for q in questions) / n
        cites = [citation_correct(p, q.oracle_text) for p, q in zip(predictions, questions, strict=True)]
        checked = [c for c in cites if c is not None]
        scores["citation_correct"] = sum(checked) / len(checked) if checked else 0.0
    return {k: round(v, 4) for k, v in scores.items()}


def drop_oracle(
    retrieved: Sequence[Sequence[str]], oracles: Sequence[str], share: float, seed: int = 0
) -> list[list[str]]:
    """The imperfect retriever: in exactly ``round(share * n)`` sets (chosen with ``seed``) every chunk of
    the oracle document is removed; other sets are unchanged."""
    rng = random.Random(seed)
    hit = set(rng.sample(range(len(retrieved)), round(share * len(retrieved))))
    return [
        [c for c in ids if not (i in hit and doc_of(c) == oracle)] if i in hit else list(ids)
        for i, (ids, oracle) in enumerate(zip(retrieved, oracles, strict=True))
    ]


def compare_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of systems (rows) by metrics (columns), in insertion order."""
    metrics = list(dict.fromkeys(m for r in results.values() for m in r))
    lines = ["| system | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in results.items():
        cells = [f"{row[m]:.3f}" if m in row else "—" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
