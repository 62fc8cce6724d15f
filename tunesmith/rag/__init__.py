"""Retrieval for RAG and RAFT: chunk documents, index them with BM25, render the one retrieval prompt."""
