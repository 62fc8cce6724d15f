"""The second RAG corpus (tunesmith's README and docs) and its hand-written questions: every answer is in the
document the question names, as `rag compare` scores it, so a docs edit that removes a fact fails here."""

from __future__ import annotations

import json

from bench.rag_bench import QUESTIONS, docs_corpus
from tunesmith.evaluate.rag_compare import contains
from tunesmith.rag.chunk import read_documents


def test_at_least_40_distinct_questions_each_answered_in_its_oracle_document():
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()]
    assert len(rows) >= 40 and len({r["question"] for r in rows}) == len(rows)
    docs = dict(read_documents(docs_corpus()))
    assert {r["oracle"] for r in rows} <= set(docs)
    missing = [(r["oracle"], r["answer"]) for r in rows if not contains(docs[r["oracle"]], r["answer"])]
    assert missing == [], "a docs edit removed these answers: fix the docs or bench/rag_docs/questions.jsonl"
    # a question's words alone must not give the answer away (closed-book 0 % should mean not knowing it)
    assert [r["question"] for r in rows if contains(r["question"], r["answer"])] == []
