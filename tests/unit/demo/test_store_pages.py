"""The store catalogue as a retrieval corpus: pages hold every value, decoys are near-named and wrong."""

from tunesmith.demo.catalogue import ATTRIBUTES, build_catalogue, generate_demo_data
from tunesmith.demo.store_pages import doc_id, raft_source_rows, store_documents, training_source_rows
from tunesmith.rag.chunk import chunk_documents
from tunesmith.rag.index import RetrievalIndex


def test_pages_and_decoys():
    catalogue = build_catalogue(seed=0, n_products=6)
    docs = store_documents(catalogue, decoys_per_product=2)
    assert len(docs) == 18 and len({d["id"] for d in docs}) == 18
    by_id = {d["id"]: d["text"] for d in docs}
    for product in catalogue.products:
        page = by_id[doc_id(product.name)]
        assert all(product.values[a] in page for a in ATTRIBUTES)
        word = product.name.split()[0].lower()
        decoys = [i for i in by_id if i.startswith(word + "-") and i != doc_id(product.name)]
        assert len(decoys) == 2
        for decoy in decoys:  # a decoy never states the real product's own values
            assert not any(product.values[a] in by_id[decoy] for a in ATTRIBUTES)


def test_raft_source_rows_point_at_the_page_that_bm25_finds():
    catalogue = build_catalogue(seed=1, n_products=4)
    docs = store_documents(catalogue, decoys_per_product=1)
    index = RetrievalIndex(chunk_documents([(d["id"], d["text"]) for d in docs]))
    product = catalogue.products[0]
    (row,) = raft_source_rows(
        [
            {
                "product": product.name,
                "value": "v",
                "messages": [{"role": "user", "content": f"{product.name}: how much?"}],
            }
        ]
    )
    assert row == {
        "question": f"{product.name}: how much?",
        "answer": "v",
        "oracle": doc_id(product.name),
        "value": "v",
    }
    assert index.search(row["question"], k=1)[0][0].doc_id == row["oracle"]


def test_training_chats_become_raft_source_rows_for_their_own_product(tmp_path):
    import json

    import pytest

    catalogue = build_catalogue(seed=0, n_products=3)
    paths = generate_demo_data(tmp_path, seed=0, n_products=3, replay=False)
    chats = [json.loads(line) for line in paths.train.read_text().splitlines()]
    rows = training_source_rows(chats, catalogue)
    facts = {
        (f["product"], f["answer"]): f["value"] for f in map(json.loads, paths.facts.read_text().splitlines())
    }
    assert len(rows) == len(chats)
    for chat, row in zip(chats, rows, strict=True):
        (product,) = [p for p in catalogue.products if p.name in chat["messages"][0]["content"]]
        assert row["oracle"] == doc_id(product.name)
        assert row["value"] == facts[(product.name, chat["messages"][1]["content"])]
    with pytest.raises(ValueError, match="names 0 products, not one"):
        training_source_rows(
            [{"messages": [{"content": "Capital of France?"}, {"content": "Paris."}]}], catalogue
        )
