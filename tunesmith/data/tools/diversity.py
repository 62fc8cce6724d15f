"""How varied is a data set? The diversity part of ``tunesmith data inspect``, with plain-language warnings.

* **near-duplicate share** — rows whose text (prompt and answer, normalised as ``data dedup`` does) has an
  estimated Jaccard similarity >= 0.8 (character 5-grams, MinHash) with an earlier row; exact repeats count;
* **n-gram diversity** — distinct-1 / distinct-2 of the answers' words (distinct n-grams / all n-grams): a
  templated answer set scores low, because every answer says the same thing;
* **topic / label balance** — label shares, the largest-to-smallest ratio and the normalised entropy (1 =
  perfectly even) for classification; for the rest, the most common openings of the prompts (first two
  words), a cheap proxy for "one kind of question dominates";
* **length spread** — the coefficient of variation of the token lengths, the p10–p90 range and how far the
  longest row is from the median.

Near-duplicates and n-grams are measured on the first :data:`SAMPLE` valid rows (the counts say how many),
so memory stays bounded on any file; label and length statistics use every row. Warning levels are
:data:`LEVELS`.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import pairwise
from typing import Any

import numpy as np

from tunesmith.data.formats import Example
from tunesmith.data.tools.dedup import MinHasher, normalize_for_match
from tunesmith.data.tools.lsh_index import NearDupConfig, NearIndex

SAMPLE = 5000
LEVELS = {
    "near_duplicate_share": 0.1,
    "distinct_2": 0.2,
    "top_opening_share": 0.5,
    "label_imbalance_ratio": 5.0,
    "length_cv": 0.05,
    "max_over_p50": 8.0,
}
"""Past these (below for distinct_2 and length_cv) inspect prints a warning."""


def _prompt_answer(example: Example) -> tuple[str, str]:
    if example.messages is None:
        return example.text or "", example.text or ""
    prompt = [m.get("content") or "" for m in example.messages if m.get("role") in ("user", "tool")]
    answer = [m.get("content") or "" for m in example.messages if m.get("role") == "assistant"]
    return " ".join(str(p) for p in prompt), " ".join(str(a) for a in answer)


class DiversityTally:
    """Fed one valid example at a time by ``inspect_file``; :meth:`report` gives the statistics."""

    def __init__(self, sample: int = SAMPLE) -> None:
        self.sample = sample
        self.config = NearDupConfig()
        self.hasher = MinHasher(self.config)
        self.index = NearIndex(self.config)
        self.seen = 0
        self.near = 0
        self.unigrams: set[str] = set()
        self.bigrams: set[tuple[str, str]] = set()
        self.n_words = 0
        self.openings: Counter[str] = Counter()

    def add(self, example: Example) -> None:
        if self.seen >= self.sample:
            return
        self.seen += 1
        prompt, answer = _prompt_answer(example)
        words = normalize_for_match(prompt).split()
        if words:
            self.openings[" ".join(words[:2])] += 1
        said = normalize_for_match(answer).split()
        self.unigrams.update(said)
        self.bigrams.update(pairwise(said))
        self.n_words += len(said)
        sig = self.hasher.signature(normalize_for_match(f"{prompt}\n{answer}"))
        if sig is None:
            return
        keys = self.index.band_keys(sig)
        found = sorted(self.index.candidates(keys))
        if found and float((self.index.signatures(found) == sig).mean(1).max()) >= self.config.threshold:
            self.near += 1
        self.index.add(sig, keys)

    def report(self, lengths: Counter[int], labels: dict[str, int] | None) -> dict[str, Any]:
        """The statistics and their ``warnings`` (plain sentences; empty when nothing stands out)."""
        out: dict[str, Any] = {"sampled_rows": self.seen}
        if self.seen:
            out["near_duplicate_share"] = round(self.near / self.seen, 4)
            out["distinct_1"] = round(len(self.unigrams) / max(1, self.n_words), 4)
            out["distinct_2"] = round(len(self.bigrams) / max(1, self.n_words - self.seen), 4)
            total = sum(self.openings.values()) or 1
            out["top_openings"] = [
                {"opening": k, "share": round(v / total, 4)} for k, v in self.openings.most_common(3)
            ]
        if labels:
            counts = list(labels.values())
            shares = np.array(counts, float) / sum(counts)
            entropy = -float((shares * np.log(shares, where=shares > 0, out=np.zeros_like(shares))).sum())
            out["label_balance"] = {
                "imbalance_ratio": round(max(counts) / max(1, min(counts)), 3),
                "min_share": round(float(shares.min()), 4),
                "entropy": round(entropy / math.log(len(counts)), 4) if len(counts) > 1 else 1.0,
            }
        if lengths:
            values = np.repeat(list(lengths), list(lengths.values())).astype(float)
            p10, p50, p90 = np.percentile(values, [10, 50, 90])
            out["length_spread"] = {
                "cv": round(float(values.std() / values.mean()), 4) if values.mean() else 0.0,
                "p10": float(p10),
                "p90": float(p90),
                "max_over_p50": round(float(values.max() / p50), 3) if p50 else 0.0,
            }
        out["warnings"] = warnings(out)
        return out


def warnings(stats: dict[str, Any]) -> list[str]:
    """Plain-language warnings for the statistics past :data:`LEVELS`."""
    out: list[str] = []
    if stats.get("near_duplicate_share", 0) > LEVELS["near_duplicate_share"]:
        out.append(
            f"{100 * stats['near_duplicate_share']:.0f}% of the rows nearly repeat an earlier row: the model "
            "sees the same thing many times and overfits it. Run `tunesmith data dedup`."
        )
    if stats.get("distinct_2", 1) < LEVELS["distinct_2"] and stats.get("sampled_rows", 0) >= 20:
        out.append(
            f"The answers use few different word pairs (distinct-2 {stats['distinct_2']:.2f}): they look "
            "templated, so the model will learn one way of answering. Add varied answers."
        )
    top = (stats.get("top_openings") or [{}])[0]
    if top.get("share", 0) > LEVELS["top_opening_share"] and stats.get("sampled_rows", 0) >= 20:
        out.append(
            f'{100 * top["share"]:.0f}% of the prompts start with "{top["opening"]}": one kind of question '
            "dominates. Add other kinds of questions, or expect weaker answers to them."
        )
    balance = stats.get("label_balance")
    if balance and balance["imbalance_ratio"] >= LEVELS["label_imbalance_ratio"]:
        out.append(
            f"The labels are unbalanced: the largest class has {balance['imbalance_ratio']:g}x the rows of "
            f"the smallest ({100 * balance['min_share']:.1f}% of the rows). Collect more of the rare labels "
            "or watch the per-label scores, not accuracy."
        )
    spread = stats.get("length_spread")
    if spread and spread["cv"] < LEVELS["length_cv"] and stats.get("sampled_rows", 0) >= 20:
        out.append("Almost every row has the same length: the data may be generated from one template.")
    if spread and spread["max_over_p50"] > LEVELS["max_over_p50"]:
        out.append(
            f"The longest row is {spread['max_over_p50']:g}x the median length: a few very long rows "
            "dominate memory and time. Check them, or lower data.max_length."
        )
    return out
