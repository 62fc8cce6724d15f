"""RAFT source rows written by a model from the corpus itself (``tunesmith data raft --generate N``).

For a user with documents but no questions: a model reads ``N`` chunks (drawn with the seed) and writes one
question each with its answer copied from the chunk. A pair survives only if it parses, its answer is
short (≤ 12 words) and appears in the chunk word for word (case aside), and its question is not a repeat;
the answer's presence is what lets the RAFT row quote its oracle. Survivors become
``{"question", "answer", "oracle": doc id}`` rows, the same shape as hand-written ones, and are saved so the
user can read (and edit) what the model asked. Every drop is counted by reason in the data report: a small
model writes many unusable pairs, and that number is the first thing to check.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from tunesmith.rag.chunk import Chunk

PROMPT = (
    "Read the passage, then write one question that the passage answers and the answer, copied "
    "from the passage.\n\nPassage: {text}\n\nReply in exactly this form:\nQuestion: <the question>\n"
    "Answer: <the answer>"
)
MAX_ANSWER_WORDS = 12
_PAIR = re.compile(r"question\s*:\s*(?P<q>.+?)\s*\n+\s*answer\s*:\s*(?P<a>[^\n]+)", re.IGNORECASE | re.DOTALL)

Generate = Callable[[list[str]], list[str]]
"""Prompts (user turns) in, completions out, in order: a model behind a chat template, or a test's fake."""


def parse_pair(completion: str) -> tuple[str, str] | None:
    """``(question, answer)`` from a ``Question: ... / Answer: ...`` completion, else None."""
    match = _PAIR.search(completion)
    if match is None:
        return None
    question = " ".join(match["q"].split())
    answer = match["a"].strip().strip("\"'").rstrip(".").strip()
    return (question, answer) if question and answer else None


def pick_chunks(chunks: Sequence[Chunk], n: int, seed: int) -> list[Chunk]:
    """``n`` chunks drawn without replacement (all of them if there are fewer), in index order."""
    if n >= len(chunks):
        return list(chunks)
    keep = set(random.Random(seed).sample(range(len(chunks)), n))
    return [c for i, c in enumerate(chunks) if i in keep]


def generated_rows(
    chunks: Sequence[Chunk], completions: Sequence[str]
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The usable ``{"question", "answer", "oracle", "chunk"}`` rows, and how many were dropped, by reason."""
    rows: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for chunk, completion in zip(chunks, completions, strict=True):
        pair = parse_pair(completion)
        if pair is None:
            dropped["unparsed"] += 1
            continue
        question, answer = pair
        if len(answer.split()) > MAX_ANSWER_WORDS:
            dropped["answer_too_long"] += 1
        elif answer.lower() not in chunk.text.lower():
            dropped["answer_not_in_chunk"] += 1
        elif question.lower() in seen:
            dropped["duplicate_question"] += 1
        else:
            seen.add(question.lower())
            rows.append({"question": question, "answer": answer, "oracle": chunk.doc_id, "chunk": chunk.id})
    return rows, dropped


def generate_questions(
    chunks: Sequence[Chunk], n: int, generate: Generate, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ask ``generate`` for one pair per drawn chunk; the kept rows and the report entry's fields."""
    picked = pick_chunks(chunks, n, seed)
    completions = generate([PROMPT.format(text=c.text) for c in picked])
    rows, dropped = generated_rows(picked, completions)
    report = {"questions_asked": len(picked), "questions_kept": len(rows), "questions_dropped": dict(dropped)}
    return rows, report


def model_generator(model_name: str, max_new_tokens: int = 64, batch_size: int = 8) -> Generate:
    """Greedy completions from ``model_name`` (a model name or directory) behind its chat template."""
    from tunesmith.infer.generate import generate_texts
    from tunesmith.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_causal_lm(model_name, dtype="float32")

    def generate(prompts: list[str]) -> list[str]:
        ids = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
            )
            for p in prompts
        ]
        return generate_texts(model, tokenizer, ids, max_new_tokens, batch_size, desc="questions")

    return generate
