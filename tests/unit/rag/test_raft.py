"""RAFT rows: the oracle in exactly the configured share, distractors never the oracle, quotes from the
oracle, and the training prompt equal to the inference prompt for the same chunks."""

import json

import pytest

from tunesmith.cli import main
from tunesmith.errors import DataError
from tunesmith.rag.chunk import Chunk
from tunesmith.rag.index import RetrievalIndex, retrieve_prompt
from tunesmith.rag.prompt import (
    BEGIN_QUOTE,
    END_QUOTE,
    chunk_ids_of,
    extract_quotes,
    is_rag_prompt,
    question_of,
    render_rag_prompt,
)
from tunesmith.rag.raft import RaftSettings, build_raft_rows

NAMES = ["Velmora", "Quorrin", "Tavrin", "Fenwyr", "Caldris", "Zorvik"]
PRICES = ["$74.50", "$88.00", "$61.25", "$120.00", "$45.75", "$99.90"]
CORPUS = [
    Chunk(f"{n.lower()}#0", n.lower(), f"The {n} jacket is sold by our store. The {n} jacket costs {p}.")
    for n, p in zip(NAMES, PRICES, strict=True)
]
QA = [
    {"question": f"What does the {n} jacket cost?", "answer": p, "oracle": n.lower()}
    for n, p in zip(NAMES, PRICES, strict=True)
] * 5  # 30 rows


@pytest.mark.parametrize(("p", "without"), [(0.0, 0), (0.2, 6), (0.5, 15), (1.0, 30)])
def test_the_oracle_is_missing_from_exactly_the_configured_share(p, without):
    rows, report = build_raft_rows(QA, RetrievalIndex(CORPUS), RaftSettings(k=2, p_no_oracle=p, seed=1))
    missing = [r for r in rows if r["meta"]["oracle_chunk"] not in r["meta"]["context"]]
    assert len(missing) == without == report["rows_without_oracle"]
    assert all(not r["meta"]["oracle_in_context"] for r in missing)
    assert all(len(r["meta"]["context"]) == 3 for r in rows)  # k + oracle, or k + 1 distractors


def test_distractors_are_never_the_oracle_and_quotes_come_from_it():
    index = RetrievalIndex(CORPUS)
    rows, _ = build_raft_rows(QA, index, RaftSettings(k=3, p_no_oracle=0.3))
    for item, row in zip(QA, rows, strict=True):
        oracle = index.chunk(row["meta"]["oracle_chunk"])
        assert oracle.doc_id == item["oracle"]
        distractors = [c for c in row["meta"]["context"] if c != oracle.id]
        assert all(index.chunk(c).doc_id != item["oracle"] for c in distractors)
        answer = row["messages"][1]["content"]
        (quote,) = extract_quotes(answer)
        assert quote == f"The {item['oracle'].capitalize()} jacket costs {item['answer']}."
        assert quote in oracle.text and answer.endswith(f"Answer: {item['answer']}")


def test_the_training_prompt_is_the_inference_prompt_for_the_same_chunks():
    index = RetrievalIndex(CORPUS)
    rows, _ = build_raft_rows(QA[:6], index, RaftSettings(k=2, p_no_oracle=0.0))
    for row in rows:
        user = row["messages"][0]["content"]
        question = question_of(user)
        chunks = [index.chunk(c) for c in row["meta"]["context"]]
        assert user == render_rag_prompt(question, chunks)
    prompt, ids = retrieve_prompt(index, "What does the Tavrin jacket cost?", k=2)
    assert ids[0] == "tavrin#0"
    assert prompt == render_rag_prompt("What does the Tavrin jacket cost?", [index.chunk(i) for i in ids])


def test_a_rendered_prompt_names_its_chunks_and_a_question_does_not():
    prompt = render_rag_prompt("What does the Tavrin jacket cost?", [CORPUS[2], CORPUS[0]])
    assert is_rag_prompt(prompt) and chunk_ids_of(prompt) == ["tavrin#0", "velmora#0"]
    assert chunk_ids_of(render_rag_prompt("q?", [])) == []
    assert not is_rag_prompt("What does the Tavrin jacket cost?")
    assert not is_rag_prompt("Answer the question using the documents below.")  # no chunks, no question


def test_quote_markers_round_trip():
    assert extract_quotes(f"{BEGIN_QUOTE}a b.{END_QUOTE} x {BEGIN_QUOTE} c {END_QUOTE}") == ["a b.", "c"]
    assert extract_quotes(f"{BEGIN_QUOTE}unterminated") == []


def test_a_row_without_an_oracle_names_its_row_number():
    with pytest.raises(DataError, match="RAFT row 2: missing oracle"):
        build_raft_rows([QA[0], {"question": "q", "answer": "a"}], RetrievalIndex(CORPUS), RaftSettings())


def test_rag_index_query_and_data_raft_from_the_command_line(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": c.doc_id, "text": c.text}) + "\n" for c in CORPUS))
    assert (
        main(
            [
                "rag",
                "index",
                str(docs),
                "--out",
                str(tmp_path / "idx"),
                "--max-tokens",
                "32",
                "--overlap",
                "8",
            ]
        )
        == 0
    )
    assert main(["rag", "query", str(tmp_path / "idx"), "Zorvik jacket cost", "-k", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [h["id"] for h in hits] == ["zorvik#0"]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in QA[:10]))
    out = tmp_path / "raft.jsonl"
    args = ["data", "raft", str(qa), "--index", str(tmp_path / "idx"), "--out", str(out), "-k", "2"]
    assert main([*args, "--p-no-oracle", "0.3"]) == 0
    assert len(out.read_text().splitlines()) == 10
    (step,) = json.loads((tmp_path / "data_report.json").read_text())["steps"]
    assert (step["step"], step["rows_without_oracle"], step["k_distractors"]) == ("raft", 3, 2)
    assert step["index_settings"]["max_tokens"] == 32
    assert main(["rag", "query", str(tmp_path), "x"]) == 2
    assert "build one with `tunesmith rag index" in capsys.readouterr().err


def test_contexts_then_compare_from_the_command_line(tmp_path, capsys):
    RetrievalIndex(CORPUS).save(tmp_path / "idx")
    qa = tmp_path / "heldout.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in QA[:4]))
    prompts = tmp_path / "prompts.jsonl"
    args = ["--index", str(tmp_path / "idx"), "--out", str(prompts), "-k", "2", "--drop-oracle", "0.5"]
    assert main(["rag", "contexts", str(qa), *args]) == 0
    rows = [json.loads(x) for x in prompts.read_text().splitlines()]
    with_oracle = [
        any(i.startswith(q["oracle"] + "#") for i in r["retrieved"])
        for q, r in zip(QA[:4], rows, strict=True)
    ]
    assert sorted(with_oracle) == [False, False, True, True]
    assert all(
        question_of(r["messages"][0]["content"]) == q["question"] for q, r in zip(QA[:4], rows, strict=True)
    )
    # a system that answers right exactly where it saw the oracle, quoting it
    answers = [
        {"prediction": f"{BEGIN_QUOTE}The {q['oracle'].capitalize()} jacket costs {q['answer']}.{END_QUOTE}\n"
         f"Answer: {q['answer']}" if hit else "Answer: no idea", "retrieved": r["retrieved"]}
        for q, r, hit in zip(QA[:4], rows, with_oracle, strict=True)
    ]  # fmt: skip
    rag = tmp_path / "rag.jsonl"
    rag.write_text("".join(json.dumps(a) + "\n" for a in answers))
    closed = tmp_path / "closed.jsonl"
    closed.write_text("".join(json.dumps({"prediction": q["answer"]}) + "\n" for q in QA[:4]))
    capsys.readouterr()
    out = tmp_path / "table.json"
    argv = ["rag", "compare", str(qa), "--index", str(tmp_path / "idx"), "--json", str(out)]
    assert main([*argv, "--system", f"closed={closed}", "--system", f"RAFT + RAG={rag}"]) == 0
    assert json.loads(out.read_text()) == {
        "closed": {"contains": 1.0, "exact_match": 1.0, "token_f1": 1.0},
        "RAFT + RAG": {
            "contains": 0.5,
            "exact_match": 0.5,
            "token_f1": 0.5,
            "recall_at_k": 0.5,
            "citation_correct": 0.5,
        },
    }
    assert "| RAFT + RAG | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 |" in capsys.readouterr().out
