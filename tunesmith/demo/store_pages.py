"""The store catalogue as a retrieval corpus: one prose product page per product plus decoy pages.

A decoy shares the real product's invented name word but is another garment with another product's values
(``"Velmora rain shell"`` next to ``"Velmora trail jacket"``), so BM25 ranks it high for a question about
the real product: the hard distractor RAFT is meant to learn to ignore. Decoy values are real values of
*other* products, so an answer read off a decoy is scored wrong, never right by accident.
"""

from __future__ import annotations

import random
import re
from typing import Any

from tunesmith.demo.catalogue import ANSWER_TEMPLATES, ATTRIBUTES, PRODUCT_TYPES, Catalogue, Product

PAGE = (
    "{name}\n\n"
    "The {name} from {brand} is made of {material}. It comes in {colour}. "
    "The {name} costs {price}. It is available in {sizes}. "
    "Its care label says {care}. The {name} is covered for {warranty}."
)


def doc_id(name: str) -> str:
    """``"Velmora trail jacket"`` -> ``"velmora-trail-jacket"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _page(catalogue: Catalogue, name: str, values: dict[str, str]) -> str:
    return PAGE.format(name=name, brand=catalogue.brand, **values)


def store_documents(catalogue: Catalogue, decoys_per_product: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """``{"id", "text"}`` rows (the ``rag index`` JSONL shape): each product's page, then its decoys.

    Raises:
        ValueError: more decoys per product than other garment types, or a one-product catalogue with decoys.
    """
    rng = random.Random(f"tunesmith-store-pages-{seed}")
    products = list(catalogue.products)
    if decoys_per_product and len(products) < 2:
        raise ValueError("decoys borrow other products' values: need at least 2 products")
    if decoys_per_product >= len(PRODUCT_TYPES):
        raise ValueError(f"decoys_per_product must be below {len(PRODUCT_TYPES)}")
    docs: list[dict[str, Any]] = []
    taken = {p.name for p in products}
    for product in products:
        docs.append({"id": doc_id(product.name), "text": _page(catalogue, product.name, product.values)})
        word, kind = product.name.split(" ", 1)
        kinds = [k for k in PRODUCT_TYPES if k != kind and f"{word} {k}" not in taken]
        for decoy_kind in rng.sample(kinds, decoys_per_product):
            name = f"{word} {decoy_kind}"
            taken.add(name)
            others = [p for p in products if p is not product]
            values = {attr: rng.choice(others).values[attr] for attr in ATTRIBUTES}
            docs.append({"id": doc_id(name), "text": _page(catalogue, name, values)})
    return docs


def raft_source_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``data raft`` source rows (question, answer, oracle) from demo rows that name their product:
    ``facts.jsonl`` rows (question/answer/product) or ``validation.jsonl`` rows (messages/product/value)."""
    out = []
    for row in rows:
        product: Product | str = row["product"]
        if "question" in row:
            question, answer = row["question"], row["answer"]
        else:
            question, answer = row["messages"][0]["content"], row["value"]
        out.append(
            {"question": question, "answer": answer, "oracle": doc_id(str(product)), "value": row["value"]}
        )
    return out


def training_source_rows(chat_rows: list[dict[str, Any]], catalogue: Catalogue) -> list[dict[str, Any]]:
    """``data raft`` source rows for the demo's training chats (``train.jsonl`` rows, which do not name their
    product), so RAFT trains on exactly the questions SFT does: the product is the one whose name the
    question contains; ``value`` is that fact's value (the answer sentence's attribute).

    Raises:
        ValueError: a question names no product or several (a replay row: generate with ``replay=False``).
    """
    out = []
    for row in chat_rows:
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        named = [p for p in catalogue.products if p.name in question]
        if len(named) != 1:
            raise ValueError(f"{question!r} names {len(named)} products, not one")
        product = named[0]
        (value,) = [
            product.values[a]
            for a in ATTRIBUTES
            if ANSWER_TEMPLATES[a].format(product=product.name, value=product.values[a]) == answer
        ]
        out.append({"question": question, "answer": answer, "oracle": doc_id(product.name), "value": value})
    return out
