"""Monitoring: is the traffic a served model sees still what it was trained for, and do users like it?

``tunesmith monitor DIR --run RUN_DIR`` reads what ``tunesmith serve --capture DIR`` kept and compares it with
the run's training data, with the statistics of :mod:`tunesmith.evaluate.drift` and four of its own:

* **length / vocabulary / embedding** — as ``tunesmith drift`` (KS of token lengths, word JS divergence,
  out-of-vocabulary rate, centroid shift of the run's own mean-pooled hidden states);
* **out-of-distribution share** — prompts whose nearest training input (cosine distance of the same
  embeddings) is farther than 95 % of the training inputs' own nearest neighbours (so about 0.05 when nothing
  moved);
* **refusal share** — answers that read as a refusal (:func:`is_refusal`), and its rise over the training
  answers' share;
* **feedback** — mean rating (0–1) and the share of bad ratings (<= 0.25), once there are
  :data:`MIN_FEEDBACK` ratings.

The verdict follows :data:`THRESHOLDS` (exit codes as ``drift``: 0 stable, 4 drifting, 5 retrain). Writes
``monitor.json``, ``monitor.png`` (trends per time bucket) and ``monitor.html`` under ``--out`` (default
``DIR/monitor/``). Cost: one forward pass per prompt (at most ``max_examples`` per side, the latest traffic).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.formats import read_source
from tunesmith.data.traffic import prompt_text, read_traffic
from tunesmith.evaluate.drift import THRESHOLDS as DRIFT_THRESHOLDS
from tunesmith.evaluate.drift import (
    embedding_stats,
    input_text,
    length_png,
    mean_hidden_states,
    text_stats,
    verdict,
)
from tunesmith.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from tunesmith.methods import load_trained
from tunesmith.report.html import html_image, html_section, html_table, page
from tunesmith.report.plots import figure, png
from tunesmith.runs import RunDir

THRESHOLDS = {
    **{k: DRIFT_THRESHOLDS[k] for k in ("length_ks", "vocab_js", "oov_rate", "embedding_shift")},
    "ood_share": (0.25, 0.5),
    "refusal_increase": (0.1, 0.25),
    "bad_feedback_share": (0.3, 0.5),
}
"""(drifting, retrain) levels per statistic, as in ``drift``."""
MAX_TREND = 5000
"""Latest answers embedded for the trends (each costs a forward pass); older ones are left out of them."""
MIN_FEEDBACK = 5
"""Fewer ratings than this say nothing about quality: the feedback statistics are shown, never judged."""
BUCKETS = (60, 3600, 86400)
"""Trend bucket widths tried (seconds): the smallest that gives at most :data:`MAX_BUCKETS` buckets."""
MAX_BUCKETS = 48
_STAMP = {60: "%m-%d %H:%M", 3600: "%m-%d %H:00", 86400: "%Y-%m-%d"}
"""How a bucket's start is written (UTC), per bucket width."""
_REFUSAL = re.compile(
    r"\b(i\s*(?:can ?not|can't|cannot|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r"\s+(?:help|assist|provide|do|comply|share|answer|give)"
    r"|i(?:'m| am) sorry,? but\b|as an ai\b|i must (?:decline|refuse)|against my (?:guidelines|policy))",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Whether an answer reads as a refusal ("I can't help with that", "I'm sorry, but ...").

    A phrase check on the answer's first 300 characters (a refusal says so up front); it misses refusals in
    other words and languages. Kept in this one function so a better detector can replace it.
    """
    return bool(_REFUSAL.search(text[:300]))


def _bucket_width(times: list[float]) -> int:
    span = max(times) - min(times) if times else 0.0
    return next((w for w in BUCKETS if span / w < MAX_BUCKETS), BUCKETS[-1])


def trends(
    captures: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    lengths: list[int],
    ood: list[bool],
) -> list[dict[str, Any]]:
    """Per time bucket: requests, mean input length, OOD share, refusal share, ratings and their mean."""
    times = [float(c.get("time") or 0.0) for c in captures]
    width = _bucket_width(times + [float(f.get("time") or 0.0) for f in feedback])
    rows: dict[int, dict[str, list[float]]] = {}
    for t, c, n, o in zip(times, captures, lengths, ood, strict=True):
        row = rows.setdefault(int(t // width), {"len": [], "ood": [], "refusal": [], "score": []})
        row["len"].append(n)
        row["ood"].append(float(o))
        row["refusal"].append(float(is_refusal(str(c.get("output") or ""))))
    for f in feedback:
        bucket = int(float(f.get("time") or 0.0) // width)
        rows.setdefault(bucket, {"len": [], "ood": [], "refusal": [], "score": []})["score"].append(
            f["score"]
        )
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731 - a local formatter
    return [
        {
            "start": time.strftime(_STAMP[width], time.gmtime(b * width)),
            "bucket_s": width,
            "requests": len(r["len"]),
            "input_tokens_mean": mean(r["len"]),
            "ood_share": mean(r["ood"]),
            "refusal_share": mean(r["refusal"]),
            "ratings": len(r["score"]),
            "rating_mean": mean(r["score"]),
        }
        for b, r in sorted(rows.items())
    ]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _ood_flags(train: np.ndarray, new: np.ndarray) -> list[bool]:
    """A prompt is out of distribution when its nearest training input (cosine distance) is farther away than
    the nearest neighbour of 95 % of the training inputs is (each measured without itself)."""
    t, n = _unit(train), _unit(new)
    within = 1 - t @ t.T
    np.fill_diagonal(within, np.inf)
    limit = float(np.quantile(within.min(1), 0.95)) if len(t) > 1 else 0.0
    return [bool(d > limit) for d in (1 - n @ t.T).min(1)]


def _feedback_stats(feedback: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [float(f["score"]) for f in feedback]
    stats: dict[str, Any] = {"ratings": len(scores)}
    if scores:
        stats["rating_mean"] = round(float(np.mean(scores)), 4)
        bad = round(sum(s <= 0.25 for s in scores) / len(scores), 4)
        # Judged only with enough ratings: two thumbs-down out of three say little.
        stats["bad_feedback_share" if len(scores) >= MIN_FEEDBACK else "bad_feedback_share_few"] = bad
    return stats


def _answers(examples: list[Any]) -> list[str]:
    return [
        str(m.get("content") or "")
        for e in examples
        for m in (e.messages or [])
        if m.get("role") == "assistant"
    ]


def monitor_report(
    capture_dir: str | Path, run_dir: str | Path, out: str | Path | None = None, max_examples: int = 512
) -> dict[str, Any]:
    """Compare captured traffic with the run's training data; write monitor.json / .png / .html.

    Raises:
        DataError: no capture in ``capture_dir``.
    """
    captures, feedback = read_traffic(capture_dir)
    n_captured, captures = len(captures), captures[-MAX_TREND:]
    run_dir = Path(run_dir)
    model, tokenizer, cfg = load_trained(run_dir)
    labels = RunDir(run_dir).label_names()
    train = read_source(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, labels).examples[:max_examples]
    texts_t = [input_text(e) for e in train]
    texts_all = [prompt_text(c) for c in captures]
    texts_n = texts_all[-max_examples:]  # the latest traffic decides; the trends show all of it
    stats: dict[str, Any] = text_stats(texts_t, texts_n, tokenizer)
    emb_t = mean_hidden_states(model, tokenizer, texts_t)
    emb_all = mean_hidden_states(model, tokenizer, texts_all)
    stats.update(embedding_stats(emb_t, emb_all[-max_examples:]))
    ood = _ood_flags(emb_t, emb_all)
    stats["ood_share"] = round(float(np.mean(ood[-max_examples:])), 4)
    refusals = [is_refusal(str(c.get("output") or "")) for c in captures[-max_examples:]]
    stats["refusal_share"] = round(float(np.mean(refusals)), 4)
    train_answers = _answers(train)
    if train_answers:
        stats["refusal_share_train"] = round(float(np.mean([is_refusal(a) for a in train_answers])), 4)
        stats["refusal_increase"] = round(max(0.0, stats["refusal_share"] - stats["refusal_share_train"]), 4)
    stats.update(_feedback_stats(feedback))
    label, reasons = verdict(stats, THRESHOLDS)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts_all]
    result = {
        "verdict": label,
        "reasons": reasons,
        "stats": stats,
        "n_train": len(train),
        "n_traffic": n_captured,
        "n_trend": len(captures),
        "run": str(run_dir),
        "trends": trends(captures, feedback, lengths, ood),
    }
    out_dir = Path(out) if out else Path(capture_dir) / "monitor"
    write_json_atomic(out_dir / "monitor.json", result)
    train_lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts_t]
    trend_png = trends_png(result["trends"])
    write_bytes_atomic(out_dir / "monitor.png", trend_png)
    write_text_atomic(
        out_dir / "monitor.html", monitor_html(result, trend_png, length_png(train_lengths, lengths))
    )
    return result


def trends_png(rows: list[dict[str, Any]]) -> bytes:
    """Four panels over time: requests, input length, OOD and refusal shares, mean rating."""
    fig = figure(9, 5.4)
    x = list(range(len(rows)))
    ticks = [r["start"] for r in rows]
    panels = (
        ("requests", ["requests"]),
        ("input tokens (mean)", ["input_tokens_mean"]),
        ("share", ["ood_share", "refusal_share"]),
        ("rating (0-1)", ["rating_mean"]),
    )
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        for key in keys:
            ys = [np.nan if r[key] is None else r[key] for r in rows]
            ax.plot(x, ys, marker="o", label=key.replace("_", " "))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, ticks, rotation=30, ha="right", fontsize=7)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def monitor_html(result: dict[str, Any], trend_png: bytes, length_png: bytes) -> str:
    """The report page: verdict and reasons, the statistics, the trends and the length histograms."""
    verdict_text = f"<p><b>{result['verdict'].upper()}</b> — {result['n_traffic']} captured answers vs "
    verdict_text += f"{result['n_train']} training inputs of {result['run']}</p>"
    reasons = (
        "".join(f"<li>{r}</li>" for r in result["reasons"]) or "<li>every statistic below its level</li>"
    )
    levels = {k: f"{w} / {b}" for k, (w, b) in THRESHOLDS.items()}
    stats = html_table(
        ["statistic", "value", "drifting / retrain at"],
        [[k, v, levels.get(k, "")] for k, v in result["stats"].items()],
    )
    trend_keys = [
        "start",
        "requests",
        "input_tokens_mean",
        "ood_share",
        "refusal_share",
        "ratings",
        "rating_mean",
    ]
    trend_table = html_table(trend_keys, [[r[k] for k in trend_keys] for r in result["trends"]])
    body = "<h1>tunesmith monitor</h1>" + verdict_text + f"<ul>{reasons}</ul>"
    body += html_section("Statistics", stats)
    body += html_section("Trends", html_image(trend_png, "trends over time") + trend_table)
    body += html_section("Input lengths", html_image(length_png, "input length histograms"))
    return page("monitor", body)
