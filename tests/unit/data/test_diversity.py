"""The diversity part of ``data inspect``: near-duplicate share, n-gram diversity, topic / label balance,
length spread, and the warnings they trigger. Reference values are worked out in the test."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import pairwise

import numpy as np

from tunesmith.data.tools.dedup import normalize_for_match
from tunesmith.data.tools.diversity import DiversityTally
from tunesmith.data.tools.inspect import format_inspect, inspect_file, inspect_html

DISTINCT = [
    ("Where is the nearest train station?", "Two blocks north of the museum."),
    ("How do I bake sourdough bread?", "Feed the starter, then knead and proof overnight."),
    ("What causes thunderstorms in summer?", "Warm humid air rising quickly into cold layers."),
    ("Recommend a novel about whales", "Moby Dick by Herman Melville."),
    ("Why is the sky blue during daytime?", "Rayleigh scattering favours short wavelengths."),
    ("Convert forty kilometres into miles", "About twenty-five miles."),
]


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_near_duplicates_ngrams_and_openings(tmp_path, default_tokenizer):
    # Six different rows, then the first one four more times (case and spacing changed: still the same).
    repeats = [_chat("WHERE is the  nearest train station?", "two blocks north of the museum.")] * 4
    path = _write(tmp_path / "d.jsonl", [_chat(q, a) for q, a in DISTINCT] + repeats)
    div = inspect_file(path, default_tokenizer)["diversity"]
    assert div["sampled_rows"] == 10 and div["near_duplicate_share"] == 0.4
    answers = [a for _, a in DISTINCT] + [DISTINCT[0][1]] * 4
    # distinct-n by hand, with the words inspect uses (normalised text split on spaces).
    said = [normalize_for_match(a).split() for a in answers]
    assert div["distinct_1"] == round(len({w for s in said for w in s}) / sum(map(len, said)), 4)
    bigrams = {pair for s in said for pair in pairwise(s)}
    assert div["distinct_2"] == round(len(bigrams) / (sum(map(len, said)) - 10), 4)
    assert div["top_openings"][0] == {"opening": "where is", "share": 0.5}
    assert any("40% of the rows nearly repeat" in w for w in div["warnings"])
    assert any(
        '50% of the prompts start with "where is"' not in w for w in div["warnings"]
    )  # 0.5 is the level
    text = format_inspect(inspect_file(path, default_tokenizer))
    assert "near-duplicates 40.0%" in text and "warning: 40% of the rows nearly repeat" in text
    assert "<h2>Diversity</h2>" in inspect_html(inspect_file(path, default_tokenizer))


def test_label_balance_and_length_spread():
    tally = DiversityTally()
    labels = {"spam": 12, "ham": 2}
    lengths = Counter({10: 9, 12: 9, 200: 1})
    div = tally.report(lengths, labels)
    shares = np.array([12, 2]) / 14
    assert div["label_balance"] == {
        "imbalance_ratio": 6.0,
        "min_share": round(2 / 14, 4),
        "entropy": round(float(-(shares * np.log(shares)).sum() / math.log(2)), 4),
    }
    values = np.array([10] * 9 + [12] * 9 + [200], float)
    assert div["length_spread"]["cv"] == round(float(values.std() / values.mean()), 4)
    assert div["length_spread"]["max_over_p50"] == round(200 / 12, 3)
    assert [w.split(":")[0] for w in div["warnings"]] == [
        "The labels are unbalanced",
        "The longest row is 16.667x the median length",
    ]


def test_templated_answers_warn(tmp_path, default_tokenizer):
    rows = [
        _chat(f"What is the price of item {k}?", "The price is listed on the product page.")
        for k in range(30)
    ]
    div = inspect_file(_write(tmp_path / "t.jsonl", rows), default_tokenizer)["diversity"]
    # 30 copies of a 8-word answer: 7 distinct bigrams of 30 * 7 = 210.
    assert div["distinct_2"] == round(7 / 210, 4)
    joined = " ".join(div["warnings"])
    assert "look templated" in joined and '100% of the prompts start with "what is"' in joined
    assert "same length" in joined
