"""RAG / RAFT measurements (docs/raft.md): the store corpus, a base-model "run", the docs corpus.

::

    python -m bench.rag_bench store work/store          # store pages + decoys, Q/A for SFT and RAFT, held-out
    python -m bench.rag_bench base-run work/runs/base   # untrained LoRA run: `tunesmith predict` = the base
    python -m bench.rag_bench docs work/docs            # README + docs/*.md, bench/rag_docs/questions.jsonl:
                                                        # base closed-book vs base + RAG (and oracle dropped)
    python -m bench.rag_bench retrieval work/retrieval  # BM25 vs the default model's embeddings vs hybrid:
                                                        # recall on both corpora (no generation)

Every step of ``docs`` is the ``tunesmith`` command line (``rag index``, ``rag contexts``, ``predict``, ``rag
compare``), called in-process and timed; the table and the seconds go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "bench" / "rag_docs" / "questions.jsonl"


def docs_corpus() -> list[Path]:
    """The second corpus: tunesmith's own README and docs (document ids README, config, jobs, ...)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    from tunesmith.io import write_jsonl_atomic

    write_jsonl_atomic(path, rows)
    return path


def store(out: Path, seed: int = 0, n_products: int = 8, decoys: int = 2) -> None:
    """The store corpus: ``docs.jsonl`` (pages + decoys), ``train.jsonl`` (SFT, no replay), ``qa_train.jsonl``
    (the same questions as ``data raft`` source rows), ``qa_heldout.jsonl`` (held-out phrasings)."""
    from tunesmith.demo.catalogue import build_catalogue, generate_demo_data
    from tunesmith.demo.store_pages import raft_source_rows, store_documents, training_source_rows

    catalogue = build_catalogue(seed, n_products)
    paths = generate_demo_data(out, seed=seed, n_products=n_products, replay=False)
    _write_jsonl(out / "docs.jsonl", store_documents(catalogue, decoys_per_product=decoys))
    read = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    _write_jsonl(out / "qa_train.jsonl", training_source_rows(read(paths.train), catalogue))
    _write_jsonl(out / "qa_heldout.jsonl", raft_source_rows(read(paths.validation)))
    print(f"rag_bench store: {out}")


def base_run(out: Path, max_new_tokens: int = 64) -> None:
    """A run directory whose adapter is LoRA at initialisation (B = 0: the base model's outputs exactly),
    with the demo's empty system turn, so ``tunesmith predict`` answers as the base model does."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.config import dump_config, load_config
    from tunesmith.io import write_json_atomic, write_text_atomic
    from tunesmith.models.loading import load_causal_lm, load_tokenizer

    cfg = load_config(
        ROOT / "recipes" / "demo.yaml", [f"name={out.name}", f"eval.max_new_tokens={max_new_tokens}"]
    )
    model = get_peft_model(
        load_causal_lm(cfg.model.name), LoraConfig(r=cfg.method.r, target_modules=["q_proj", "v_proj"])
    )
    model.save_pretrained(out / "adapter")
    load_tokenizer(cfg.model.name).save_pretrained(out / "adapter")
    write_text_atomic(out / "config.yaml", dump_config(cfg))
    write_json_atomic(out / "data_report.json", {})
    write_json_atomic(out / "summary.json", {"task": "generation"})
    print(f"rag_bench base-run: {out}")


def _cli(*argv: str) -> float:
    """Run one ``tunesmith`` command in-process; its seconds (a non-zero exit stops the bench)."""
    from tunesmith.cli import main

    start = time.perf_counter()
    if main(list(argv)) != 0:
        raise SystemExit(f"rag_bench: `tunesmith {' '.join(argv)}` failed")
    return round(time.perf_counter() - start, 1)


def docs(out: Path, k: int = 3, drop: float = 0.5) -> dict[str, Any]:
    """Base closed-book, base + RAG and base + RAG with the oracle dropped from ``drop`` of the questions on
    the docs corpus; writes ``OUT/results.json`` (metrics per system and seconds per step)."""
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    idx = out / "idx"
    docs = [str(p) for p in docs_corpus()]
    seconds["index"] = _cli("rag", "index", *docs, "--out", str(idx), "--tokenizer", "default")
    qa = [json.loads(x) for x in QUESTIONS.read_text().splitlines()]
    closed = _write_jsonl(
        out / "closed.jsonl", [{"messages": [{"role": "user", "content": q["question"]}]} for q in qa]
    )
    for name, share in (("rag", 0.0), ("rag_drop", drop)):
        contexts = ["--index", str(idx), "--out", str(out / f"{name}.jsonl"), "-k", str(k)]
        _cli("rag", "contexts", str(QUESTIONS), *contexts, "--drop-oracle", str(share))
    base = out / "base"
    if not (base / "adapter").is_dir():
        base_run(base)
    systems = {
        "base closed-book": closed,
        "base + RAG": out / "rag.jsonl",
        f"base + RAG, oracle dropped from {drop:.0%}": out / "rag_drop.jsonl",
    }
    specs = []
    for i, (system, prompts) in enumerate(systems.items()):
        preds = out / f"preds{i}.jsonl"
        seconds[system] = _cli("predict", str(base), "--data", str(prompts), "--out", str(preds))
        specs += ["--system", f"{system}={preds}"]
    _cli("rag", "compare", str(QUESTIONS), "--index", str(idx), *specs, "--json", str(out / "table.json"))
    results = {
        "k": k,
        "questions": len(qa),
        "seconds": seconds,
        "table": json.loads((out / "table.json").read_text()),
    }
    from tunesmith.io import write_json_atomic

    write_json_atomic(out / "results.json", results)
    print(json.dumps(seconds))
    return results


def _recall(index: Any, qa: list[dict[str, Any]], ks: tuple[int, ...]) -> dict[str, float]:
    """For each k: the oracle document among the top k chunks, and the answer's text inside one of them
    (shares of the questions); one search per question."""
    found = {f"{what}@{k}": 0 for k in ks for what in ("doc", "answer")}
    for q in qa:
        hits = [c for c, _ in index.search(q["question"], k=max(ks))]
        value = str(q.get("value", q["answer"])).lower()
        for k in ks:
            found[f"doc@{k}"] += any(c.doc_id == q["oracle"] for c in hits[:k])
            found[f"answer@{k}"] += any(value in c.text.lower() for c in hits[:k])
    return {key: round(n / len(qa), 3) for key, n in found.items()}


def retrieval(out: Path, ks: tuple[int, ...] = (1, 3, 10)) -> dict[str, Any]:
    """Recall of the three retrievers on the docs corpus (50 hand-written questions) and the store corpus
    (40 products with 2 decoys each, the 240 held-out phrasings); embedding seconds for chunks and queries.
    Writes ``OUT/retrieval.json``."""
    from tunesmith.models.loading import load_tokenizer
    from tunesmith.rag.chunk import chunk_documents, read_documents
    from tunesmith.rag.embed import Embedder
    from tunesmith.rag.index import RetrievalIndex

    out.mkdir(parents=True, exist_ok=True)
    store(out / "store", n_products=40)
    corpora = {
        "docs": (docs_corpus(), [json.loads(x) for x in QUESTIONS.read_text().splitlines()]),
        "store": (
            [out / "store" / "docs.jsonl"],
            [json.loads(x) for x in (out / "store" / "qa_heldout.jsonl").read_text().splitlines()],
        ),
    }
    tok = load_tokenizer("default")
    embedder = Embedder()
    results: dict[str, Any] = {}
    for name, (paths, qa) in corpora.items():
        count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        chunks = chunk_documents(read_documents(paths), 128, 32, count)
        start = time.perf_counter()
        dense = RetrievalIndex(chunks, retriever="embedding", embedder=embedder)
        row: dict[str, Any] = {"chunks": len(chunks), "questions": len(qa)}
        row["embed_chunks_s"] = round(time.perf_counter() - start, 1)
        indexes = {
            "bm25": RetrievalIndex(chunks),
            "embedding": dense,
            "hybrid": RetrievalIndex(chunks, retriever="hybrid", embedder=embedder, vectors=dense.vectors),
        }
        for retriever, index in indexes.items():
            start = time.perf_counter()
            row[retriever] = _recall(index, qa, ks)
            row[retriever]["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = row
        print(name, json.dumps(row))
    from tunesmith.io import write_json_atomic

    write_json_atomic(out / "retrieval.json", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rag_bench", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("store", "base-run", "docs", "retrieval"))
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    {"store": store, "base-run": base_run, "docs": docs, "retrieval": retrieval}[args.what](args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
