"""rag compare's metrics on a hand-built case with known outcomes."""

import pytest

from tunesmith.evaluate.rag_compare import (
    Question,
    answer_part,
    citation_correct,
    compare_table,
    drop_oracle,
    score_system,
)

ORACLE = "The Velmora jacket costs $74.50. It comes in ember orange."
QS = [
    Question("Velmora price?", "$74.50", "velmora", ("velmora#0", "quorrin#0"), ORACLE),
    Question("Velmora colour?", "ember orange", "velmora", ("quorrin#0", "tavrin#1"), ORACLE),
]


def test_a_system_scored_on_known_answers():
    predictions = [
        "##begin_quote##The Velmora jacket costs $74.50.##end_quote##\nAnswer: $74.50",
        "##begin_quote##It comes in slate blue.##end_quote##\nAnswer: it is ember orange",
    ]
    assert score_system(predictions, QS, rag=True) == {
        "contains": 1.0,  # both answers contain the reference
        "exact_match": 0.5,  # "it is ember orange" is not "ember orange"
        "token_f1": 0.8333,  # (1 + F1(P=2/4, R=2/2) = 2/3) / 2
        "recall_at_k": 0.5,  # the oracle document was retrieved for the first question only
        "citation_correct": 0.5,  # the second quote is not in the oracle
    }
    assert score_system(["no idea", "$74.50"], QS, rag=False) == {
        "contains": 0.0,
        "exact_match": 0.0,
        "token_f1": 0.0,
    }


def test_answer_part_and_citations():
    assert answer_part("##begin_quote##x##end_quote##\nAnswer: 42") == "42"
    assert answer_part("just 42") == "just 42"
    assert citation_correct("no quote at all", ORACLE) == 0.0
    assert citation_correct("##begin_quote## It comes in\n ember orange. ##end_quote##", ORACLE) == 1.0
    assert citation_correct("anything", "") is None


def test_the_imperfect_retriever_drops_the_oracle_from_exactly_the_share():
    retrieved = [["a#0", "a#1", "b#0"], ["b#0", "c#0"], ["c#0", "a#0"], ["d#0", "d#1"]]
    oracles = ["a", "b", "c", "d"]
    dropped = drop_oracle(retrieved, oracles, share=0.5, seed=3)
    changed = [i for i, (before, after) in enumerate(zip(retrieved, dropped, strict=True)) if before != after]
    assert len(changed) == 2
    for i in changed:
        assert all(not c.startswith(oracles[i] + "#") for c in dropped[i])
        assert [c for c in retrieved[i] if not c.startswith(oracles[i] + "#")] == dropped[i]
    assert drop_oracle(retrieved, oracles, share=0.0) == retrieved


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="1 predictions for 2 questions"):
        score_system(["x"], QS, rag=False)


def test_the_table_lists_every_system_and_metric():
    table = compare_table({"base": {"contains": 0.25}, "RAFT + RAG": {"contains": 0.5, "recall_at_k": 1.0}})
    assert table.splitlines() == [
        "| system | contains | recall_at_k |",
        "|---|---|---|",
        "| base | 0.250 | — |",
        "| RAFT + RAG | 0.500 | 1.000 |",
    ]
