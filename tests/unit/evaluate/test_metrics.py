"""Evaluation metrics against values worked out by hand."""

from __future__ import annotations

import random

import pytest

from tunesmith.evaluate.metrics import (
    classification_metrics,
    corpus_bleu,
    exact_match,
    generation_metrics,
    lcs_length,
    normalize_answer,
    rouge_l,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower.", "eiffel tower"),
        ("  an   apple, a pear!  ", "apple pear"),
        ("Don't stop-me", "dont stopme"),  # punctuation is deleted, not turned into a space (SQuAD)
        ("“Paris” — ¿Sí?", "paris sí"),  # Unicode quotes, dash and ¿ count as punctuation
        ("Theatre another", "theatre another"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_after_normalization() -> None:
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Towers", "eiffel tower") == 0.0
    assert exact_match("", "the") == 1.0  # both normalise to nothing


def test_token_f1_known_overlap() -> None:
    # pred tokens: [cat, sat, on, mat, today] (5), ref: [cat, sat, on, red, mat] (5), overlap 4.
    # P = 4/5, R = 4/5 -> F1 = 0.8
    assert token_f1("The cat sat on the mat today", "the cat sat on the red mat") == pytest.approx(0.8)
    # pred [paris, france] vs ref [paris]: P = 1/2, R = 1 -> 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)


def test_token_f1_counts_repeats_once_per_match() -> None:
    # pred [x, x, x], ref [x, y]: overlap min(3, 1) = 1; P = 1/3, R = 1/2 -> F1 = 0.4
    assert token_f1("x x x", "x y") == pytest.approx(0.4)


def test_token_f1_empty_rules() -> None:
    assert token_f1("", "") == 1.0
    assert token_f1("the", "a") == 1.0  # both only articles -> both empty
    assert token_f1("", "paris") == 0.0
    assert token_f1("london", "paris") == 0.0


def test_lcs_length_known_lists() -> None:
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (CLRS): BCBA
    assert lcs_length(["a", "b", "c"], ["c", "b", "a"]) == 1
    assert lcs_length(["x"] * 70, ["x"] * 65) == 65  # longer than one 64-bit word
    assert lcs_length([], ["a"]) == 0


def _lcs_dp(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_length_matches_plain_dynamic_programme() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 90))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_known_value() -> None:
    # pred [police, killed, gunman] (3), ref [police, kill, gunman] (3) after normalisation;
    # LCS = [police, gunman] = 2 -> P = R = 2/3 -> F = 2/3
    assert rouge_l("police killed the gunman", "the police kill the gunman") == pytest.approx(2 / 3)
    # pred [w, x, y, z] vs ref [x, z]: LCS 2, P = 2/4, R = 2/2 -> 2 * 0.5 / 1.5 = 2/3
    assert rouge_l("w x y z", "x z") == pytest.approx(2 / 3)
    # order matters for ROUGE-L but not for token F1
    assert rouge_l("z y x", "x y z") == pytest.approx(1 / 3)
    assert token_f1("z y x", "x y z") == 1.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("x", "") == 0.0


def test_generation_metrics_means() -> None:
    result = generation_metrics(["Paris.", "x x x", "z y x"], ["paris", "x y", "x y z"])
    assert result["n"] == 3
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["token_f1"] == pytest.approx((1.0 + 0.4 + 1.0) / 3)
    # rouge per example: 1.0; LCS([x,x,x],[x,y]) = 1 -> P 1/3 R 1/2 -> 0.4; 1/3
    assert result["rouge_l"] == pytest.approx((1.0 + 0.4 + 1 / 3) / 3)
    assert set(result) == {"exact_match", "token_f1", "rouge_l", "bleu", "n"}


def test_bleu_is_corpus_bleu_by_hand() -> None:
    # n-gram precisions of "the cat sat on the mat" against "the cat sat on a mat": 5/6, 3/5, 2/4, 1/3;
    # equal lengths, so no brevity penalty: BLEU = geometric mean.
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        expected, abs=1e-9
    )
    assert generation_metrics(["a b c d e"], ["a b c d e"])["bleu"] == 1.0
    # Half as long as the reference (same words): brevity penalty exp(1 - 8/4) times perfect precisions.
    assert corpus_bleu(["w x y z"], ["w x y z w x y z"]) == pytest.approx(2.718281828**-1, abs=1e-6)


def test_generation_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no examples"):
        generation_metrics([], [])


def test_classification_metrics_by_hand() -> None:
    labels = ["neg", "neu", "pos"]
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
    result = classification_metrics(y_true, y_pred, labels)
    # rows = true, columns = predicted
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert result["accuracy"] == pytest.approx(5 / 8)
    # neg: P 2/3 R 2/3 F 2/3; neu: P 1/2 R 1/2 F 1/2; pos: P 2/3 R 2/3 F 2/3
    assert result["per_class_f1"] == pytest.approx({"neg": 2 / 3, "neu": 0.5, "pos": 2 / 3})
    assert result["precision_macro"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert result["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert result["f1_macro"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert result["labels"] == labels
    assert result["n"] == 8
    assert all(type(v) is int for row in result["confusion_matrix"] for v in row)  # JSON-serialisable


def test_classification_metrics_absent_class_counts_as_zero() -> None:
    # class "c" never occurs in truth or prediction: it still appears and scores 0.
    result = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], ["a", "b", "c"])
    # a: P 2/3 R 1 F 0.8; b: P 1 R 1/2 F 2/3; c: 0
    assert result["per_class_f1"] == pytest.approx({"a": 0.8, "b": 2 / 3, "c": 0.0})
    assert result["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)
    assert result["precision_macro"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert result["recall_macro"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert result["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert result["accuracy"] == pytest.approx(0.75)


def test_classification_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"label ids \[3\] are outside 0..1"):
        classification_metrics([0, 3], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="pair them"):
        classification_metrics([0], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="duplicates"):
        classification_metrics([0], [0], ["a", "a"])
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [], ["a"])
