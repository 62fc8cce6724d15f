"""An index over chunks: lexical (BM25, via ``bm25s``, the default), dense (:mod:`tunesmith.rag.embed`) or
both fused, saved as plain JSON (+ the vectors in safetensors).

Saved form: ``INDEX/index.json`` (settings, version), ``INDEX/chunks.jsonl`` (one chunk a line) and, for a
dense or hybrid index, ``INDEX/embeddings.safetensors`` (one unit vector per chunk, in chunk order). The
BM25 matrix is not stored: it is rebuilt from the chunks on load, which costs milliseconds for thousands of
chunks and means no pickle, no binary format to version, and an index a user can read and diff.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import bm25s
import torch

from tunesmith.errors import DataError
from tunesmith.io import write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from tunesmith.rag import RETRIEVERS
from tunesmith.rag.chunk import Chunk
from tunesmith.rag.embed import Embedder, fuse_rankings
from tunesmith.rag.prompt import render_rag_prompt

INDEX_VERSION = 1
Retriever = Literal["bm25", "embedding", "hybrid"]


def _tokens(texts: list[str]) -> Any:
    # English stopwords out: "what is the price of X" should match on X and price, not on "the"
    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


class RetrievalIndex:
    """Chunks plus a retriever over them: BM25, dense vectors, or both fused (``hybrid``)."""

    def __init__(
        self,
        chunks: list[Chunk],
        settings: dict[str, Any] | None = None,
        retriever: Retriever = "bm25",
        embedder: Embedder | None = None,
        vectors: torch.Tensor | None = None,
    ) -> None:
        """Index ``chunks`` (at least one); ``settings`` (chunk sizes, tokenizer) are kept for the record. A
        dense or hybrid index embeds the chunks with ``embedder`` (default: the default model) unless their
        ``vectors`` are given (a saved index)."""
        if not chunks:
            raise DataError("no chunks to index: the documents are empty")
        if retriever not in RETRIEVERS:
            raise DataError(f"retriever {retriever!r}: choose one of {', '.join(RETRIEVERS)}")
        self.chunks, self.retriever = chunks, retriever
        self.settings = dict(settings or {})
        self._by_id = {c.id: c for c in chunks}
        self._bm25 = bm25s.BM25()
        self._bm25.index(_tokens([c.text for c in chunks]), show_progress=False)
        self.embedder, self.vectors = None, None
        if retriever != "bm25":
            self.embedder = embedder or Embedder()
            if vectors is None:
                vectors = self.embedder.encode([c.text for c in chunks], progress=True)
            if vectors.shape[0] != len(chunks):
                raise DataError(f"{vectors.shape[0]} vectors for {len(chunks)} chunks; rebuild the index")
            self.vectors = vectors

    def chunk(self, chunk_id: str) -> Chunk:
        """The chunk with this id. Raises: DataError: no such chunk."""
        if chunk_id not in self._by_id:
            raise DataError(f"chunk {chunk_id!r} is not in this index")
        return self._by_id[chunk_id]

    def search(self, query: str, k: int = 4, exclude_doc: str | None = None) -> list[tuple[Chunk, float]]:
        """The top-``k`` chunks for ``query``, best first, with their scores (BM25, cosine, or fused; see
        :meth:`_ranked`). ``exclude_doc`` drops every chunk of that document (RAFT's distractors)."""
        ranked = self._ranked(query)
        hits = [(self.chunks[i], score) for i, score in ranked if self.chunks[i].doc_id != exclude_doc]
        return hits[:k]

    def _ranked(self, query: str) -> list[tuple[int, float]]:
        """Every candidate chunk position with its score, best first: BM25 scores (chunks sharing no term
        left out), cosine similarities, or fused reciprocal-rank scores."""
        lexical: list[tuple[int, float]] = []
        if self.retriever != "embedding":
            docs, scores = self._bm25.retrieve(_tokens([query]), k=len(self.chunks), show_progress=False)
            lexical = [(i, s) for i, s in zip(docs[0].tolist(), scores[0].tolist(), strict=True) if s > 0]
            if self.retriever == "bm25":
                return lexical
        assert self.embedder is not None and self.vectors is not None
        cosine = (self.vectors @ self.embedder.encode([query])[0]).tolist()
        dense = sorted(enumerate(cosine), key=lambda item: -item[1])
        if self.retriever == "embedding":
            return dense
        fused = fuse_rankings([[i for i, _ in lexical], [i for i, _ in dense]])
        return [(i, 1.0 / (1 + rank)) for rank, i in enumerate(fused)]

    def save(self, out: str | Path) -> Path:
        """Write ``out/index.json`` and ``out/chunks.jsonl`` (atomically); returns ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(out / "chunks.jsonl", [asdict(c) for c in self.chunks])
        meta = {"version": INDEX_VERSION, "engine": "bm25s", "chunks": len(self.chunks), **self.settings}
        if self.embedder is not None and self.vectors is not None:
            from safetensors.torch import save

            write_bytes_atomic(out / "embeddings.safetensors", save({"vectors": self.vectors.contiguous()}))
            meta.update(retriever=self.retriever, embed_model=self.embedder.model_name)
            meta.update(embed_layer=self.embedder.layer, embed_max_tokens=self.embedder.max_tokens)
        write_json_atomic(out / "index.json", meta)
        return out

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
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
        dense = ("retriever", "embed_model", "embed_layer", "embed_max_tokens")
        settings = {k: v for k, v in meta.items() if k not in ("version", "engine", "chunks", *dense)}
        retriever = meta.get("retriever", "bm25")  # indexes written before dense retrieval are BM25
        if retriever == "bm25":
            return cls(chunks, settings)
        from safetensors.torch import load_file

        vectors_path = path / "embeddings.safetensors"
        if not vectors_path.is_file():
            raise DataError(f"{vectors_path}: missing for this {retriever} index; rebuild it")
        embedder = Embedder(meta["embed_model"], meta["embed_layer"], meta["embed_max_tokens"])
        return cls(chunks, settings, retriever, embedder, load_file(vectors_path)["vectors"])


def retrieve_prompt(index: RetrievalIndex, question: str, k: int = 4) -> tuple[str, list[str]]:
    """The inference-time user turn for ``question``: the top-``k`` chunks rendered by the same
    :func:`~tunesmith.rag.prompt.render_rag_prompt` RAFT trained on; returns it with the chunk ids."""
    chunks = [c for c, _ in index.search(question, k=k)]
    return render_rag_prompt(question, chunks), [c.id for c in chunks]
