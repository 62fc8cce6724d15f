"""A lexical (BM25, via ``bm25s``) index over chunks, saved as plain JSON.

Saved form: ``INDEX/index.json`` (settings, version) and ``INDEX/chunks.jsonl`` (one chunk a line). The
BM25 matrix is not stored: it is rebuilt from the chunks on load, which costs milliseconds for thousands of
chunks and means no pickle, no binary format to version, and an index a user can read and diff.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bm25s

from tunesmith.errors import DataError
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.rag.chunk import Chunk
from tunesmith.rag.prompt import render_rag_prompt

INDEX_VERSION = 1


def _tokens(texts: list[str]) -> Any:
    # English stopwords out: "what is the price of X" should match on X and price, not on "the"
    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


class BM25Index:
    """Chunks plus a BM25 retriever over them."""

    def __init__(self, chunks: list[Chunk], settings: dict[str, Any] | None = None) -> None:
        """Index ``chunks`` (at least one); ``settings`` (chunk sizes, tokenizer) are kept for the record."""
        if not chunks:
            raise DataError("no chunks to index: the documents are empty")
        self.chunks = chunks
        self.settings = dict(settings or {})
        self._by_id = {c.id: c for c in chunks}
        self._bm25 = bm25s.BM25()
        self._bm25.index(_tokens([c.text for c in chunks]), show_progress=False)

    def chunk(self, chunk_id: str) -> Chunk:
        """The chunk with this id. Raises: DataError: no such chunk."""
        if chunk_id not in self._by_id:
            raise DataError(f"chunk {chunk_id!r} is not in this index")
        return self._by_id[chunk_id]

    def search(self, query: str, k: int = 4, exclude_doc: str | None = None) -> list[tuple[Chunk, float]]:
        """The top-``k`` chunks for ``query``, best first, with BM25 scores; chunks scoring 0 (no shared
        term) are left out. ``exclude_doc`` drops every chunk of that document (RAFT's distractors)."""
        n = len(self.chunks)
        docs, scores = self._bm25.retrieve(_tokens([query]), k=n, show_progress=False)
        hits: list[tuple[Chunk, float]] = []
        for idx, score in zip(docs[0].tolist(), scores[0].tolist(), strict=True):
            chunk = self.chunks[idx]
            if score <= 0 or chunk.doc_id == exclude_doc:
                continue
            hits.append((chunk, float(score)))
            if len(hits) == k:
                break
        return hits

    def save(self, out: str | Path) -> Path:
        """Write ``out/index.json`` and ``out/chunks.jsonl`` (atomically); returns ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(out / "chunks.jsonl", [asdict(c) for c in self.chunks])
        meta = {"version": INDEX_VERSION, "engine": "bm25s", "chunks": len(self.chunks), **self.settings}
        write_json_atomic(out / "index.json", meta)
        return out

    @classmethod
    def load(cls, path: str | Path) -> BM25Index:
        """Read an index written by :meth:`save`.

        Raises:
            DataError: ``path`` is not an index directory (says how to build one).
        """
        path = Path(path)
        meta_path, chunks_path = path / "index.json", path / "chunks.jsonl"
        if not meta_path.is_file() or not chunks_path.is_file():
            raise DataError(
                f"{path} is not a tunesmith index; build one with `tunesmith rag index DOCS --out {path}`"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != INDEX_VERSION:
            raise DataError(
                f"{meta_path}: index version {meta.get('version')} is not {INDEX_VERSION}; "
                "rebuild it with `tunesmith rag index`"
            )
        chunks = []
        for n, line in enumerate(chunks_path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                chunks.append(Chunk(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise DataError(f"{chunks_path}:{n}: not a chunk row ({err}); rebuild the index") from err
        settings = {k: v for k, v in meta.items() if k not in ("version", "engine", "chunks")}
        return cls(chunks, settings)


def retrieve_prompt(index: BM25Index, question: str, k: int = 4) -> tuple[str, list[str]]:
    """The inference-time user turn for ``question``: the top-``k`` chunks rendered by the same
    :func:`~tunesmith.rag.prompt.render_rag_prompt` RAFT trained on; returns it with the chunk ids."""
    chunks = [c for c, _ in index.search(question, k=k)]
    return render_rag_prompt(question, chunks), [c.id for c in chunks]
