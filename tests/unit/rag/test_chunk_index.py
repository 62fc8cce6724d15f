"""Chunker boundaries and overlap on known text; BM25 ranking and the saved index on a tiny corpus."""

import json

import pytest

from tunesmith.errors import DataError
from tunesmith.rag.chunk import Chunk, chunk_documents, chunk_text, read_documents, split_sentences
from tunesmith.rag.index import BM25Index

TEXT = "One two three. Four five six. Seven eight nine. Ten eleven twelve."


def test_chunks_end_on_sentences_and_carry_the_overlap():
    assert chunk_text(TEXT, max_tokens=6, overlap=3) == [
        "One two three. Four five six.",
        "Four five six. Seven eight nine.",
        "Seven eight nine. Ten eleven twelve.",
    ]


def test_no_overlap_packs_whole_sentences():
    assert chunk_text(TEXT, max_tokens=7, overlap=0) == [
        "One two three. Four five six.",
        "Seven eight nine. Ten eleven twelve.",
    ]


def test_a_sentence_over_budget_is_split_on_words():
    assert chunk_text("a b c d e f g.", max_tokens=3, overlap=0) == ["a b c", "d e f", "g."]


def test_overlap_must_be_below_the_chunk_size():
    with pytest.raises(DataError, match="overlap 8 must be >= 0 and below max_tokens 8"):
        chunk_text(TEXT, max_tokens=8, overlap=8)


def test_sentences_split_at_blank_lines_too():
    assert split_sentences("Title\n\nFirst one. Second!") == ["Title", "First one.", "Second!"]


def test_documents_from_md_html_and_jsonl(tmp_path):
    (tmp_path / "a.md").write_text("Alpha doc.", encoding="utf-8")
    (tmp_path / "b.html").write_text("<p>Beta</p><script>x()</script><p>page.</p>", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "c1", "text": "Gamma."}) + "\n", encoding="utf-8")
    docs = read_documents([tmp_path / "a.md", tmp_path / "b.html", tmp_path / "c.jsonl"])
    assert [(d, split_sentences(t)) for d, t in docs] == [
        ("a", ["Alpha doc."]),
        ("b", ["Beta", "page."]),
        ("c1", ["Gamma."]),
    ]
    assert [c.id for c in chunk_documents(docs)] == ["a#0", "b#0", "c1#0"]


def test_a_bad_jsonl_document_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "x", "text": "ok"}\n{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: a document line must be"):
        read_documents([path])


CORPUS = [
    Chunk("velmora#0", "velmora", "The Velmora trail jacket costs $74.50 and comes in ember orange."),
    Chunk("quorrin#0", "quorrin", "The Quorrin rain shell costs $88.00 and comes in slate blue."),
    Chunk("tavrin#0", "tavrin", "The Tavrin fleece hoodie is machine washable at 30 degrees."),
]


def test_bm25_ranks_the_document_that_names_the_product_first():
    index = BM25Index(CORPUS)
    assert [c.id for c, _ in index.search("What the Quorrin rain shell costs?", k=3)] == [
        "quorrin#0",
        "velmora#0",
    ]
    assert [c.id for c, _ in index.search("Tavrin washing", k=3)] == ["tavrin#0"]  # no shared term: left out
    assert [c.id for c, _ in index.search("Velmora costs", k=3, exclude_doc="velmora")] == ["quorrin#0"]


def test_a_saved_index_loads_back_with_the_same_answers(tmp_path):
    BM25Index(CORPUS, {"max_tokens": 64}).save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["max_tokens"] == 64
    loaded = BM25Index.load(tmp_path / "idx")
    assert loaded.chunks == CORPUS and loaded.settings == {"max_tokens": 64}
    assert loaded.search("ember orange", k=1)[0][0].id == "velmora#0"


def test_loading_a_non_index_says_how_to_build_one(tmp_path):
    with pytest.raises(DataError, match="build one with `tunesmith rag index DOCS --out"):
        BM25Index.load(tmp_path)
