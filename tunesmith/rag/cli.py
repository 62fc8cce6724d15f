"""``tunesmith rag ...`` and ``tunesmith data raft``: build and query an index, write RAFT rows.

::

    tunesmith rag index docs/*.md pages.jsonl --out work/index [--tokenizer default] [--max-tokens 128]
    tunesmith rag query work/index "what does the Velmora trail jacket cost?" [-k 4] [--json]
    tunesmith data raft qa.jsonl --index work/index --out work/raft.jsonl [-k 3] [--p-no-oracle 0.2]
    tunesmith rag contexts heldout.jsonl --index work/index --out work/rag_prompts.jsonl [--drop-oracle 0.3]
    tunesmith rag compare heldout.jsonl --index work/index --system "RAFT + RAG=raft.preds.jsonl" ...

``rag contexts`` writes the retrieval prompts (the training shape) once, so every system answers the same
retrieved sets (``--drop-oracle``: the imperfect retriever); ``tunesmith predict RUN --data`` answers them;
``rag compare`` scores the prediction files side by side.

Exit codes: 0 done, 2 tunesmith error (``tunesmith: error: ...``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError, guarded


def _counter(tokenizer: str | None) -> Callable[[str], int]:
    if tokenizer is None:
        from tunesmith.rag.chunk import word_count

        return word_count
    from tunesmith.models.loading import load_tokenizer

    tok = load_tokenizer(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


@guarded
def _index(args: argparse.Namespace) -> int:
    from tunesmith.rag.chunk import chunk_documents, read_documents
    from tunesmith.rag.index import BM25Index

    docs = read_documents(args.docs)
    chunks = chunk_documents(docs, args.max_tokens, args.overlap, _counter(args.tokenizer))
    settings = {
        "max_tokens": args.max_tokens,
        "overlap": args.overlap,
        "tokenizer": args.tokenizer or "whitespace words",
        "documents": len(docs),
    }
    out = BM25Index(chunks, settings).save(args.out)
    print(f"tunesmith rag index: {len(docs)} documents, {len(chunks)} chunks -> {out}")
    return 0


@guarded
def _query(args: argparse.Namespace) -> int:
    from tunesmith.rag.index import BM25Index

    hits = BM25Index.load(args.index).search(args.query, k=args.k)
    if args.json:
        print(json.dumps([{"id": c.id, "score": round(s, 4), "text": c.text} for c, s in hits], indent=2))
        return 0
    for chunk, score in hits:
        print(f"[{chunk.id}] {score:.3f}  {chunk.text[:200]}")
    return 0


def _read_qa(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not JSON ({err})") from err
        if not isinstance(row, dict) or not all(k in row for k in ("question", "answer", "oracle")):
            raise DataError(f'{path}:{n}: a RAFT source row is {{"question", "answer", "oracle": doc id}}')
        rows.append(row)
    return rows


@guarded
def _raft(args: argparse.Namespace) -> int:
    from tunesmith.data.tools.stream import add_report_entry
    from tunesmith.io import write_jsonl_atomic
    from tunesmith.rag.index import BM25Index
    from tunesmith.rag.raft import RaftSettings, build_raft_rows

    source = Path(args.input)
    if not source.is_file():
        raise DataError(f"{source}: no such file")
    settings = RaftSettings(k=args.k, p_no_oracle=args.p_no_oracle, seed=args.seed)
    rows, report = build_raft_rows(_read_qa(source), BM25Index.load(args.index), settings)
    out = Path(args.out)
    write_jsonl_atomic(out, rows)
    report.update({"input": str(source), "output": str(out), "index": str(args.index)})
    report_path = Path(args.report) if args.report else out.parent / "data_report.json"
    add_report_entry(report_path, report)
    print(
        f"tunesmith data raft: {len(rows)} rows ({report['rows_without_oracle']} without oracle, "
        f"k={settings.k}) -> {out}; report {report_path}"
    )
    return 0


@guarded
def _contexts(args: argparse.Namespace) -> int:
    from tunesmith.evaluate.rag_compare import drop_oracle
    from tunesmith.io import write_jsonl_atomic
    from tunesmith.rag.index import BM25Index
    from tunesmith.rag.prompt import render_rag_prompt

    index = BM25Index.load(args.index)
    qa = _read_qa(Path(args.input))
    retrieved = [[c.id for c, _ in index.search(q["question"], k=args.k)] for q in qa]
    retrieved = drop_oracle(retrieved, [str(q["oracle"]) for q in qa], args.drop_oracle, args.seed)
    rows = [
        {
            "messages": [
                {"role": "user", "content": render_rag_prompt(q["question"], [index.chunk(i) for i in ids])}
            ],
            "retrieved": ids,
        }
        for q, ids in zip(qa, retrieved, strict=True)
    ]
    write_jsonl_atomic(args.out, rows)
    print(
        f"tunesmith rag contexts: {len(rows)} prompts "
        f"(oracle dropped from {args.drop_oracle:.0%}) -> {args.out}"
    )
    return 0


@guarded
def _compare(args: argparse.Namespace) -> int:
    from tunesmith.evaluate.rag_compare import Question, compare_table, score_system
    from tunesmith.io import write_json_atomic
    from tunesmith.rag.index import BM25Index

    index = BM25Index.load(args.index)
    qa = _read_qa(Path(args.input))
    oracle_text = {}
    for chunk in index.chunks:
        oracle_text.setdefault(chunk.doc_id, []).append(chunk.text)
    results: dict[str, dict[str, float]] = {}
    for spec in args.system:
        name, sep, path = spec.partition("=")
        if not sep:
            raise DataError(f'--system {spec!r}: write it as "NAME=predictions.jsonl"')
        preds = [
            json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        if len(preds) != len(qa):
            raise DataError(f"{path}: {len(preds)} predictions for {len(qa)} questions in {args.input}")
        rag = any("retrieved" in p for p in preds)
        questions = [
            Question(
                str(q["question"]),
                str(q.get("value", q["answer"])),
                str(q["oracle"]),
                tuple(p.get("retrieved", ())),
                " ".join(oracle_text.get(str(q["oracle"]), [])),
            )
            for q, p in zip(qa, preds, strict=True)
        ]
        results[name] = score_system([str(p["prediction"]) for p in preds], questions, rag)
    print(compare_table(results))
    if args.json:
        write_json_atomic(args.json, results)
    return 0


def add_raft_parser(data_sub: Any) -> None:
    """Register ``data raft`` on the ``data`` subcommand's subparsers."""
    p = data_sub.add_parser("raft", help="RAFT rows: question + oracle + BM25 distractors, quoted answer")
    p.add_argument("input", help='JSONL of {"question", "answer", "oracle": document id}')
    p.add_argument("--index", required=True, help="an index from `tunesmith rag index`")
    p.add_argument("--out", required=True, help="the chat JSONL to write")
    p.add_argument("-k", type=int, default=3, help="distractor chunks per row (default 3)")
    p.add_argument("--p-no-oracle", type=float, default=0.2, help="share of rows without the oracle (0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", help="data report to append to (default: data_report.json beside --out)")
    p.set_defaults(func=_raft)


def add_parser(subparsers: Any) -> None:
    """Register ``rag index`` and ``rag query`` on the ``tunesmith`` parser's subparsers."""
    rag = subparsers.add_parser("rag", help="retrieval: index documents, query the index")
    sub = rag.add_subparsers(dest="rag_command", required=True, metavar="STEP")
    p = sub.add_parser("index", help="chunk documents (.txt .md .html .jsonl) and build a BM25 index")
    p.add_argument("docs", nargs="+", help="document files")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--max-tokens", type=int, default=128, help="chunk size in tokens (default 128)")
    p.add_argument("--overlap", type=int, default=32, help="tokens shared by neighbouring chunks (32)")
    p.add_argument("--tokenizer", help="model whose tokenizer counts tokens (e.g. default); words if unset")
    p.set_defaults(func=_index)
    p = sub.add_parser("query", help="the top-k chunks for a query")
    p.add_argument("index")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print JSON (id, score, text)")
    p.set_defaults(func=_query)
    p = sub.add_parser("contexts", help="retrieval prompts for held-out questions (for `predict --data`)")
    p.add_argument("input", help='JSONL of {"question", "answer", "oracle"}')
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("-k", type=int, default=4)
    p.add_argument("--drop-oracle", type=float, default=0.0, help="share of sets without the oracle (0)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_contexts)
    p = sub.add_parser(
        "compare", help="score systems' predictions side by side (accuracy, recall@k, citations)"
    )
    p.add_argument("input", help='the held-out JSONL of {"question", "answer", "oracle"} (+ "value")')
    p.add_argument("--index", required=True)
    p.add_argument("--system", action="append", required=True, help='"NAME=predictions.jsonl", repeatable')
    p.add_argument("--json", help="also write the table as JSON here")
    p.set_defaults(func=_compare)
