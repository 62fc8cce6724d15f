"""Graders (OpenAI vocabulary) against values worked out by hand; python graders run real subprocesses."""

from __future__ import annotations

import logging
import math
import re
import time

import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.graders import SIMILARITIES, Grade, build_grader, grader_scores
from tunesmith.objective import (
    SIMILARITY_METRICS,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)


def scores(cfg, completions, items=None, **kwargs) -> list[float]:
    grades = build_grader(cfg, **kwargs)(completions, items or [{}] * len(completions))
    return [g.score for g in grades]


# ---- string_check ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("eq", [1.0, 0.0, 0.0, 0.0]),
        ("ne", [0.0, 1.0, 1.0, 1.0]),
        ("like", [1.0, 1.0, 0.0, 0.0]),
        ("ilike", [1.0, 1.0, 1.0, 0.0]),
    ],
)
def test_string_check_operations(operation, expected):
    cfg = StringCheckGrader(reference="{{item.answer}}", operation=operation)
    completions = ["Paris", "It is Paris.", "PARIS!", "Lyon"]
    assert scores(cfg, completions, [{"answer": "Paris"}] * 4) == expected


# ---- templates -------------------------------------------------------------------------------------------


def test_templates_read_nested_fields_lists_and_write_numbers_as_json():
    cfg = StringCheckGrader(
        input="{{ sample.output_text }}|{{item.meta.n}}|{{item.meta.x}}|{{item.tags.1}}|{{item.ok}}",
        reference="42|18|2.5|b|true",
    )
    item = {"meta": {"n": 18, "x": 2.5}, "tags": ["a", "b"], "ok": True}
    assert scores(cfg, ["42"], [item]) == [1.0]


def test_missing_item_field_names_the_field_and_the_available_ones():
    grader = build_grader(StringCheckGrader(reference="{{item.meta.answer}}"))
    with pytest.raises(DataError, match=r"item\.meta has no 'answer' \(its fields: question, solution\)"):
        grader(["x"], [{"meta": {"question": "q", "solution": "s"}}])


def test_unknown_template_variable_is_a_config_error_at_build_time():
    with pytest.raises(ConfigError, match=r"\{\{sample\.output_json\}\}"):
        build_grader(StringCheckGrader(input="{{sample.output_json}}", reference="x"))


# ---- text_similarity -------------------------------------------------------------------------------------


def test_every_documented_metric_is_implemented():
    assert set(SIMILARITIES) == set(SIMILARITY_METRICS)


def test_fuzzy_match_is_the_normalised_indel_similarity():
    # kitten / sitting: longest common subsequence "ittn" (4), Indel distance 6 + 7 - 2*4 = 5, 1 - 5/13.
    cfg = TextSimilarityGrader(reference="{{item.ref}}", evaluation_metric="fuzzy_match")
    assert scores(cfg, ["kitten"], [{"ref": "sitting"}]) == [pytest.approx(8 / 13)]


def test_bleu_is_one_for_identical_and_zero_for_disjoint_text():
    cfg = TextSimilarityGrader(reference="the cat sat on the mat", evaluation_metric="bleu")
    assert scores(cfg, ["the cat sat on the mat", "dogs bark loudly"]) == [1.0, 0.0]


CAT = "The cat sat on the mat."


@pytest.mark.parametrize(
    ("metric", "reference", "completion", "expected"),
    [
        # unigrams: the (1 of 2), cat, on, mat shared -> 4 of 6 each way -> F = 2/3
        ("rouge_1", CAT, "the cat lay on a mat", 2 / 3),
        # bigrams: only "the cat" of 5 each way -> 1/5
        ("rouge_2", CAT, "the cat lay on a mat", 1 / 5),
        # longest common subsequence "the cat on mat": 4 of 6 each way
        ("rouge_l", CAT, "the cat lay on a mat", 2 / 3),
        # the same words reversed: every unigram matches, no bigram, a common subsequence of one word
        ("rouge_1", "one two three four", "four three two one", 1.0),
        ("rouge_2", "one two three four", "four three two one", 0.0),
        ("rouge_l", "one two three four", "four three two one", 1 / 4),
        # P = 1/2, R = 1/3 -> F = 2PR / (P + R) = 2/5
        ("rouge_l", "one two three", "one four", 2 / 5),
    ],
)
def test_rouge_f_measures(metric, reference, completion, expected):
    cfg = TextSimilarityGrader(reference=reference, evaluation_metric=metric)
    assert scores(cfg, [completion]) == [pytest.approx(expected)]


def test_rouge_keeps_non_ascii_words():
    # rouge-score's default tokeniser would drop every Greek letter and score 0; ours: 1 shared word of 2.
    cfg = TextSimilarityGrader(reference="Καλημέρα κόσμε", evaluation_metric="rouge_1")
    assert scores(cfg, ["καλημέρα φίλε"]) == [pytest.approx(0.5)]


def test_pass_threshold_turns_similarity_into_pass_fail():
    make = lambda t: TextSimilarityGrader(reference="sitting", pass_threshold=t)  # noqa: E731
    assert scores(make(0.6), ["kitten"]) == [1.0]  # 8/13 = 0.615
    assert scores(make(0.7), ["kitten"]) == [0.0]


# ---- python ----------------------------------------------------------------------------------------------

SOURCE = """
import socket

def grade(sample, item):
    text = sample["output_text"]
    print("grader output must not break the protocol")
    if text == "loop":
        while True:
            pass
    if text == "net":
        socket.create_connection(("example.com", 80))
    if text == "text":
        return "high"
    return float(text == str(item["answer"]))
"""


def test_python_grader_scores_and_reports_each_failure_without_raising():
    grader = build_grader(PythonGrader(source=SOURCE, timeout_s=0.5))
    items = [{"answer": 18}, {"answer": 18}, {"answer": 18}, {}, {"answer": 18}, {"answer": 18}]
    start = time.monotonic()
    grades = grader(["18", "17", "net", "18", "text", "loop"], items)
    assert time.monotonic() - start < 5
    assert [g.score for g in grades] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert [g.error for g in grades[:2]] == [None, None]
    assert grades[2].error == "OSError: network disabled in python graders (line 11)"
    assert grades[3].error == "KeyError: 'answer' (line 14)"
    assert grades[4].error == "grade() returned str 'high', not a number"
    assert grades[5].error == "timeout after 0.5s"


def test_python_grader_timeout_costs_one_sample_and_the_rest_are_graded():
    source = (
        "def grade(sample, item):\n    while sample['output_text'] == 'loop':\n        pass\n    return 1\n"
    )
    grades = build_grader(PythonGrader(source=source, timeout_s=0.5))(["a", "loop", "b"], [{}] * 3)
    assert grades == [Grade(1.0), Grade(0.0, "timeout after 0.5s"), Grade(1.0)]


def test_python_grader_memory_limit_fails_that_sample_only():
    source = (
        "def grade(sample, item):\n"
        "    size = int(sample['output_text'])\n"
        "    return len(bytearray(size * 2**20)) / 2**20\n"
    )
    grades = build_grader(PythonGrader(source=source, memory_mb=256))(["8", "1024", "16"], [{}] * 3)
    assert grades == [Grade(8.0), Grade(0.0, "MemoryError:  (line 3)"), Grade(16.0)]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def grade(sample, item)\n    return 1\n", "does not compile"),
        ("def score(sample, item):\n    return 1\n", "no top-level `grade`"),
    ],
)
def test_python_grader_source_is_checked_at_build_time(source, message):
    with pytest.raises(ConfigError, match=message):
        build_grader(PythonGrader(source=source))


def test_each_distinct_error_is_logged_once(caplog):
    grader = build_grader(PythonGrader(source="def grade(sample, item):\n    return 1 / 0\n"))
    with caplog.at_level(logging.WARNING, logger="tunesmith.evaluate.graders"):
        grader(["a", "b"], [{}, {}])
        scored, errors = grader_scores(grader, ["c"], [{}])
    assert [r.getMessage() for r in caplog.records] == [
        "grader 'python' scored 0: ZeroDivisionError: division by zero (line 2)"
    ]
    assert (scored, errors) == ([0.0], {"ZeroDivisionError: division by zero (line 2)": 1})


# ---- score_model -----------------------------------------------------------------------------------------


def test_score_model_maps_the_sigmoid_of_the_reward_into_the_range():
    loaded = []

    def load(model: str):
        loaded.append(model)
        return lambda texts, items: [0.0, math.log(3), -1000.0][: len(texts)]

    ranged = ScoreModelGrader(model="runs/rm", range=(0.0, 10.0))
    assert scores(ranged, ["a", "b", "c"], load_score_model=load) == [5.0, pytest.approx(7.5), 0.0]
    assert scores(ScoreModelGrader(model="runs/rm"), ["a", "b"], load_score_model=load) == [0.0, math.log(3)]
    assert loaded == ["runs/rm", "runs/rm"]  # once per build, not per batch


def test_score_model_without_a_loader_says_it_needs_a_reward_model_run():
    with pytest.raises(ConfigError, match="needs a reward-model run"):
        build_grader(ScoreModelGrader(model="runs/rm"))


# ---- multi -----------------------------------------------------------------------------------------------

CORRECT = StringCheckGrader(reference="{{item.ref}}")
SIMILAR = TextSimilarityGrader(reference="{{item.ref}}")


def test_multi_weighted_formula():
    cfg = MultiGrader(
        graders={"correct": CORRECT, "similar": SIMILAR}, calculate_output="0.7 * correct + 0.3 * similar"
    )
    got = scores(cfg, ["kitten", "sitting"], [{"ref": "sitting"}] * 2)
    assert got == [pytest.approx(0.3 * 8 / 13), pytest.approx(1.0)]


def test_multi_formula_functions_and_operators():
    cfg = MultiGrader(
        graders={"correct": CORRECT, "similar": SIMILAR},
        calculate_output="max(correct, 0.5) - abs(-0.25) + min(similar, 1) ** 2 / (1 + 1)",
    )
    assert scores(cfg, ["kitten"], [{"ref": "sitting"}]) == [pytest.approx(0.25 + (8 / 13) ** 2 / 2)]


def test_multi_passes_sub_grader_errors_on_and_counts_them_as_zero():
    failing = PythonGrader(source="def grade(sample, item):\n    return 1 / len(sample['output_text'])\n")
    cfg = MultiGrader(
        graders={"inverse": failing, "correct": CORRECT}, calculate_output="2 * inverse + correct"
    )
    grades = build_grader(cfg)(["ab", ""], [{"ref": "ab"}, {"ref": ""}])
    assert grades[0] == Grade(2.0)
    assert grades[1] == Grade(1.0, "inverse: ZeroDivisionError: division by zero (line 2)")


def test_multi_formula_arithmetic_error_scores_zero():
    cfg = MultiGrader(graders={"correct": CORRECT}, calculate_output="1 / correct")
    assert build_grader(cfg)(["x"], [{"ref": "y"}]) == [
        Grade(0.0, "calculate_output: float division by zero")
    ]


@pytest.mark.parametrize(
    ("formula", "token"),
    [
        ("__import__('os')", "calling '__import__'"),
        ("correct.real", "Attribute"),
        ("correct + other", "the name 'other'"),
        ("'1' + correct", "the constant '1'"),
        ("True * correct", "the constant True"),
        ("min(correct)", "the call 'min(correct)'"),
        ("correct if correct else 1", "IfExp"),
        ("correct +", "not valid"),
    ],
)
def test_multi_rejects_anything_but_arithmetic_at_build_time(formula, token):
    with pytest.raises(ConfigError, match=re.escape(token)):
        build_grader(MultiGrader(graders={"correct": CORRECT}, calculate_output=formula))
