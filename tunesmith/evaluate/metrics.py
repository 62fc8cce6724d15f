"""Evaluation metrics: pure functions over strings and label ids (no torch, no model).

Generation metrics compare a prediction with one reference after :func:`normalize_answer`, the SQuAD
normalisation, so "The Eiffel Tower." and "eiffel tower" count as the same answer::

    generation_metrics(["Paris.", "a cat"], ["paris", "the dog"])
    # {"exact_match": 0.5, "token_f1": 0.5, "rouge_l": 0.5, "bleu": 0.0, "n": 2}

BLEU is the exception: it is sacrebleu's corpus BLEU over all pairs (its standard 13a tokenisation of the raw
texts, case kept, exp smoothing), divided by 100 to sit in [0, 1] beside the others. It is the score
translation and summarisation papers report, and it rewards word order (4-grams) where token F1 does not;
short answers (under four words) score near 0 on it, so read it on long-form generation.

Tokenization choices (shared by every generation metric, so their numbers are comparable):

* text is lowercased; ASCII punctuation (``string.punctuation``) *and* every Unicode punctuation character
  (category ``P*``: curly quotes, dashes, ``¿``...) is deleted, not replaced by a space, as in SQuAD, so
  ``don't`` -> ``dont`` and ``well-known`` -> ``wellknown``;
* the English articles ``a``, ``an``, ``the`` are dropped as whole words;
* tokens are the whitespace-separated words that remain. Scripts written without spaces (Chinese,
  Japanese, Thai) therefore become one token per run of text, and F1 / ROUGE-L degrade towards exact match.

When both the prediction and the reference normalise to nothing, they are treated as matching (score 1.0);
when only one is empty the score is 0.0 (the SQuAD v2 convention, applied to ROUGE-L too).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Normalise an answer SQuAD-style: lowercase, delete punctuation and articles, collapse whitespace.

    Args:
        text: Any string (a model's generation or a reference answer).

    Returns:
        The normalised string, words separated by single spaces, no leading or trailing space.
    """
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _f_measure(overlap: int, n_pred: int, n_ref: int) -> float:
    """Harmonic mean of precision overlap/n_pred and recall overlap/n_ref, with the empty-text rule."""
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision = overlap / n_pred
    recall = overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD bag-of-tokens F1: overlap counts each shared token min(count in pred, count in ref) times.

    Args:
        prediction: Generated text.
        reference: Expected text.

    Returns:
        ``2PR / (P + R)`` with ``P = overlap / len(pred_tokens)`` and ``R = overlap / len(ref_tokens)``.
    """
    pred, ref = _tokens(prediction), _tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f_measure(overlap, len(pred), len(ref))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Hyyrö 2004): one Python big-int holds a row of the classic DP table, so the cost is
    ``len(b)`` big-int operations on ``len(a)`` bits instead of ``len(a) * len(b)`` interpreted steps —
    it matters for 500-token generations times hundreds of examples.
    """
    if not a or not b:
        return 0
    match: dict[str, int] = {}
    for i, tok in enumerate(a):
        match[tok] = match.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full  # a 1 bit means "the LCS has not used this position of a yet"
    for tok in b:
        hit = row & match.get(tok, 0)
        row = ((row + hit) | (row - hit)) & full
    return len(a) - row.bit_count()


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) on normalised tokens.

    Args:
        prediction: Generated text.
        reference: Expected text.

    Returns:
        ``2PR / (P + R)`` with ``P = LCS / len(pred_tokens)`` and ``R = LCS / len(ref_tokens)``.
    """
    pred, ref = _tokens(prediction), _tokens(reference)
    return _f_measure(lcs_length(pred, ref), len(pred), len(ref))


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (13a tokenisation, exp smoothing) of paired texts, in [0, 1]."""
    import sacrebleu  # deferred: its import costs ~0.3 s, and a classification run never needs it

    # Clamped: sacrebleu returns 100.00000000000004 for identical texts.
    return min(1.0, sacrebleu.corpus_bleu(predictions, [references]).score / 100.0)


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean exact match, token F1 and ROUGE-L over paired predictions and references.

    Args:
        predictions: One generated text per example.
        references: The expected text for each example, same order.

    Returns:
        ``{"exact_match", "token_f1", "rouge_l", "bleu", "n"}``; the first three are means in [0, 1],
        ``bleu`` is corpus BLEU / 100.

    Raises:
        ValueError: The lists differ in length or are empty (a mean over no examples has no value).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pair them 1:1")
    if not predictions:
        raise ValueError("no examples to score; skip the evaluation of an empty split instead")
    n = len(predictions)
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / n,
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
        "bleu": corpus_bleu(predictions, references),
        "n": n,
    }


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1, per-class F1 and the confusion matrix.

    Every label in ``labels`` counts, including classes absent from both ``y_true`` and ``y_pred``: such a
    class scores 0 (``zero_division=0``) and pulls the macro averages down, so the macro numbers always
    average over the same ``len(labels)`` classes and runs stay comparable.

    Args:
        y_true: Gold label ids, each in ``range(len(labels))``.
        y_pred: Predicted label ids, same length and range.
        labels: Label names in id order.

    Returns:
        ``{"accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class_f1": {label: f1},
        "confusion_matrix": [[int]] (rows = true, columns = predicted, label order), "labels", "n"}``
        with plain Python numbers (JSON-serialisable).

    Raises:
        ValueError: Lengths differ, there are no examples or no labels, or an id is out of range.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions; pair them 1:1")
    if not y_true:
        raise ValueError("no examples to score; skip the evaluation of an empty split instead")
    if not labels:
        raise ValueError("labels is empty; pass the label names in id order")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels {labels} contain duplicates; each class needs its own name")
    ids = range(len(labels))
    bad = sorted({int(v) for v in (*y_true, *y_pred) if int(v) not in ids})
    if bad:
        raise ValueError(f"label ids {bad} are outside 0..{len(labels) - 1} for labels {labels}")
    label_ids = list(ids)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=label_ids, average="macro", zero_division=0
    )
    _, _, per_class, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=label_ids, average=None, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=label_ids)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "per_class_f1": {name: float(v) for name, v in zip(labels, np.asarray(per_class), strict=True)},
        "confusion_matrix": matrix.astype(int).tolist(),
        "labels": list(labels),
        "n": len(y_true),
    }
