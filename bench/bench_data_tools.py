"""Throughput and memory of the data tools on synthetic rows: inspect -> clean -> dedup -> pii -> split.

Generates ``--rows`` classification rows (varied pseudo-word text, planted exact and one-word-changed near
duplicates, planted PII, HTML entities and messy whitespace) into a temporary directory, runs each step once
and prints rows/s and peak RSS per step. Results go to ``bench/results/data_tools.json``. ``inspect`` renders
and tokenizes every row with the default model's tokenizer (loaded before the clock starts, so its memory is
in the baseline).

    .venv/bin/python bench/bench_data_tools.py --rows 100000     # about a minute on 2 cores
    .venv/bin/python bench/bench_data_tools.py                   # 1,000,000 rows: several minutes, GBs of RAM

Each step runs in a fresh (spawned) interpreter, so its peak RSS (``VmHWM``) is its own; ``baseline_rss_mb``
is that interpreter's RSS after imports, before the step. Rows/s counts the rows each step reads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import random
import resource
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tunesmith.data.tools import clean_file, dedup_file, inspect_file, redact_file, split_file
from tunesmith.io import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "data_tools.json"
LABELS = ("joy", "anger", "sadness", "optimism")
PII_SAMPLES = (
    "write to {name}.{n}@example.com",
    "call +44 20 7946 {n:04d}",
    "card 4111 1111 1111 1111",
    "iban DE89 3704 0044 0532 0130 00",
    "server 10.{a}.{b}.7",
    "ssn 123-45-{n:04d}",
)


def _vocabulary(rng: random.Random, size: int = 20000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    return ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(size)]


def generate(path: Path, rows: int, seed: int) -> dict[str, int]:
    """Write ``rows`` synthetic JSONL rows; returns what was planted."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    recent: deque[str] = deque(maxlen=2000)
    planted: Counter[str] = Counter()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            roll = rng.random()
            if roll < 0.02 and recent:
                text = rng.choice(recent)  # exact duplicate
                planted["exact_duplicate"] += 1
            elif roll < 0.04 and recent:
                words = rng.choice(recent).split(" ")
                words[rng.randrange(len(words))] = rng.choice(vocab)  # one word changed
                text = " ".join(words)
                planted["near_duplicate"] += 1
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(15, 40)))
                if roll > 0.97:
                    sample = rng.choice(PII_SAMPLES)
                    text += " " + sample.format(name=rng.choice(vocab), n=i % 10000, a=i % 250, b=i % 199)
                    planted["pii"] += 1
                elif roll > 0.95:
                    text = text.replace(" ", " &amp; ", 1) + "<br>"
                    planted["html"] += 1
                elif roll > 0.945:
                    text = "   "
                    planted["empty"] += 1
                if text.strip():
                    recent.append(text)
            if rng.random() < 0.1:
                text = text.replace(" ", "  ", 3)
            row = {
                "text": text,
                "label": LABELS[i % len(LABELS)],
                "user": f"u{rng.randrange(rows // 20 + 1)}",
            }
            fh.write(json.dumps(row) + "\n")
    return dict(planted)


def _tokenizer() -> dict[str, Any]:
    from tunesmith.models.loading import load_tokenizer

    return {"tokenizer": load_tokenizer("default")}


STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "inspect": inspect_file,
    "clean": clean_file,
    "dedup": dedup_file,
    "pii": redact_file,
    "split": split_file,
}
SETUP: dict[str, Callable[[], dict[str, Any]]] = {"inspect": _tokenizer}
"""What a step needs loaded before it is timed (extra keyword arguments)."""


def _rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux), or ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def _child(step: str, kwargs: dict[str, Any], conn: Connection) -> None:
    """Run one step in a fresh interpreter so its peak RSS is its own, not the previous step's leftovers."""
    kwargs |= SETUP.get(step, dict)()
    baseline = _rss_mb("VmRSS")
    start = time.perf_counter()
    report = STEPS[step](**kwargs)
    conn.send((report, time.perf_counter() - start, _rss_mb("VmHWM"), baseline))
    conn.close()


def timed(step: str, rows_in: int, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(step, kwargs, child))
    proc.start()
    child.close()
    report, seconds, peak, baseline = parent.recv()
    proc.join()
    figures = {
        "rows_in": rows_in,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows_in / seconds),
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
    }
    print(f"{step:>8}: {figures['rows_per_s']:>9,} rows/s  {seconds:7.1f} s  peak RSS {peak:8.1f} MB")
    return figures, report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        d = Path(tmp)
        start = time.perf_counter()
        planted = generate(d / "raw.jsonl", args.rows, args.seed)
        size_mb = (d / "raw.jsonl").stat().st_size / 2**20
        took = time.perf_counter() - start
        print(f"generated {args.rows:,} rows ({size_mb:.0f} MB) in {took:.1f} s: {planted}")
        steps: dict[str, Any] = {}
        reports: dict[str, Any] = {}
        steps["inspect"], reports["inspect"] = timed("inspect", args.rows, path=d / "raw.jsonl")
        steps["clean"], reports["clean"] = timed(
            "clean", args.rows, src=d / "raw.jsonl", dst=d / "clean.jsonl"
        )
        n = reports["clean"]["rows_out"]
        steps["dedup"], reports["dedup"] = timed("dedup", n, src=d / "clean.jsonl", dst=d / "dedup.jsonl")
        n = reports["dedup"]["rows_out"]
        steps["pii"], reports["pii"] = timed("pii", n, src=d / "dedup.jsonl", dst=d / "pii.jsonl")
        steps["split"], reports["split"] = timed(
            "split", n, src=d / "pii.jsonl", out_dir=d / "splits", stratify_by="label", seed=args.seed
        )
    results = {
        "rows": args.rows,
        "input_mb": round(size_mb, 1),
        "planted": planted,
        "inspected": {
            k: reports["inspect"][k] for k in ("rows", "valid", "empty", "malformed", "duplicates")
        },
        "found": {
            "empty": reports["clean"]["dropped"].get("empty", 0),
            "html_rows": reports["clean"]["changed"].get("html_removed", 0),
            **reports["dedup"]["dropped"],
            "pii": reports["pii"]["details"]["occurrences"],
        },
        "split_rows": reports["split"]["rows"],
        "steps": steps,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
