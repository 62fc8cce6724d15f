"""Chunker boundaries and overlap on known text; BM25 ranking and the saved index on a tiny corpus."""

import json

import pytest
import torch

from tunesmith.errors import DataError
from tunesmith.rag.chunk import Chunk, chunk_documents, chunk_text, read_documents, split_sentences
from tunesmith.rag.index import RetrievalIndex

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
    index = RetrievalIndex(CORPUS)
    assert [c.id for c, _ in index.search("What the Quorrin rain shell costs?", k=3)] == [
        "quorrin#0",
        "velmora#0",
    ]
    assert [c.id for c, _ in index.search("Tavrin washing", k=3)] == ["tavrin#0"]  # no shared term: left out
    assert [c.id for c, _ in index.search("Velmora costs", k=3, exclude_doc="velmora")] == ["quorrin#0"]


def test_a_saved_index_loads_back_with_the_same_answers(tmp_path):
    RetrievalIndex(CORPUS, {"max_tokens": 64}).save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["max_tokens"] == 64
    loaded = RetrievalIndex.load(tmp_path / "idx")
    assert loaded.chunks == CORPUS and loaded.settings == {"max_tokens": 64}
    assert loaded.search("ember orange", k=1)[0][0].id == "velmora#0"


def test_loading_a_non_index_says_how_to_build_one(tmp_path):
    with pytest.raises(DataError, match="build one with `tunesmith rag index DOCS --out"):
        RetrievalIndex.load(tmp_path)


def _dense_chunks() -> list[Chunk]:
    texts = [
        "The parka costs 120 dollars.",
        "Wool socks, made in Norway, very warm indeed.",
        "Return within 30 days.",
    ]
    return [Chunk(f"d{i}#0", f"d{i}", t) for i, t in enumerate(texts)]


def test_a_chunk_embeds_the_same_alone_and_beside_longer_ones(tiny_model_dir):
    from tunesmith.rag.embed import Embedder

    embedder = Embedder(str(tiny_model_dir))
    batch = embedder.encode([c.text for c in _dense_chunks()])
    alone = embedder.encode([_dense_chunks()[0].text])
    assert batch.shape == (3, 64)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=0)  # left pads change nothing


def test_a_dense_index_ranks_a_chunk_first_for_its_own_text_and_survives_saving(tiny_model_dir, tmp_path):
    from tunesmith.rag.embed import Embedder

    chunks = _dense_chunks()
    index = RetrievalIndex(chunks, {"max_tokens": 8}, "embedding", Embedder(str(tiny_model_dir)))
    for chunk in chunks:
        best, score = index.search(chunk.text, k=1)[0]
        assert best.id == chunk.id and score == pytest.approx(1.0, abs=1e-5)
    loaded = RetrievalIndex.load(index.save(tmp_path / "idx"))
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["retriever"], meta["embed_layer"], meta["max_tokens"]) == ("embedding", -4, 8)
    assert loaded.retriever == "embedding" and torch.equal(loaded.vectors, index.vectors)
    query = "socks from Norway"
    assert [c.id for c, _ in loaded.search(query, k=3)] == [c.id for c, _ in index.search(query, k=3)]
    (tmp_path / "idx" / "embeddings.safetensors").unlink()
    with pytest.raises(DataError, match=r"embeddings\.safetensors: missing for this embedding index"):
        RetrievalIndex.load(tmp_path / "idx")


def test_hybrid_fuses_the_bm25_and_dense_rankings(tiny_model_dir):
    from tunesmith.rag.embed import Embedder, fuse_rankings

    assert fuse_rankings([[0, 1, 2], [2, 0]]) == [0, 2, 1]  # 1/61+1/62 > 1/61+1/63 > 1/62
    chunks, embedder = _dense_chunks(), Embedder(str(tiny_model_dir))
    dense = RetrievalIndex(chunks, retriever="embedding", embedder=embedder)
    hybrid = RetrievalIndex(chunks, retriever="hybrid", embedder=embedder, vectors=dense.vectors)
    query = "what do the socks cost"
    lexical = [chunks.index(c) for c, _ in RetrievalIndex(chunks).search(query, k=3)]
    cosine = [chunks.index(c) for c, _ in dense.search(query, k=3)]
    expected = [chunks[i].id for i in fuse_rankings([lexical, cosine])]
    assert [c.id for c, _ in hybrid.search(query, k=3)] == expected
    with pytest.raises(DataError, match="retriever 'dense': choose one of bm25, embedding, hybrid"):
        RetrievalIndex(chunks, retriever="dense")  # type: ignore[arg-type]
