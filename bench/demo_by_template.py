"""Score a demo run's held-out answers per question template and per attribute (docs/measurements.md).

    python bench/demo_by_template.py runs/demo          # the directory `tunesmith demo` wrote

A held-out question is put back into its template by replacing the product name with ``{product}``;
templates that open with the name are summed apart from those that name it mid-sentence, and each miss is
checked for another product's value of the same attribute (a recall error, not a phrasing one).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

from tunesmith.demo.catalogue import answer_contains
from tunesmith.io import read_jsonl


def score_by_template(run_dir: Path) -> tuple[dict[str, dict[str, list[bool]]], Counter[str]]:
    """Hits (``True`` = right) grouped by ``template``, ``attribute`` and ``opens_with_name`` (yes/no), and
    the number of misses of each kind."""
    validation = read_jsonl(run_dir / "data" / "validation.jsonl")
    predictions = read_jsonl(run_dir / "predictions_tuned_validation.jsonl")
    facts = read_jsonl(run_dir / "data" / "facts.jsonl")
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    misses: Counter[str] = Counter()
    for row, pred in zip(validation, predictions, strict=True):
        question, answer = row["messages"][0]["content"], pred["prediction"]
        hit = answer_contains(answer, row["value"])
        groups["template"][question.replace(row["product"], "{product}")].append(hit)
        groups["attribute"][row["attribute"]].append(hit)
        groups["opens_with_name"]["yes" if question.startswith(row["product"]) else "no"].append(hit)
        if not hit:
            other = any(
                f["attribute"] == row["attribute"] and answer_contains(answer, f["value"]) for f in facts
            )
            misses["another product's value" if other else "no catalogue value"] += 1
    return groups, misses


def main() -> None:
    groups, misses = score_by_template(Path(sys.argv[1]))
    for group, counts in groups.items():
        print(f"## {group}")
        for key, hits in sorted(counts.items(), key=lambda kv: sum(kv[1]) / len(kv[1])):
            print(f"{sum(hits):4d} of {len(hits):3d}  {key}")
    print("## misses")
    for kind, n in misses.most_common():
        print(f"{n:4d}  {kind}")


if __name__ == "__main__":
    main()
