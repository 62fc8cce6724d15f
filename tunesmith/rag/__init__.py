"""Retrieval for RAG and RAFT: chunk documents, index them with BM25, render the one retrieval prompt."""

RETRIEVERS: tuple[str, ...] = ("bm25", "embedding", "hybrid")
"""``rag index --retriever`` choices; here, torch-free, so the command line parser loads no model code."""
