"""Drift: are the inputs a model now sees still like the ones it was trained on?

``tunesmith drift RUN_DIR --data NEW_FILE`` compares NEW_FILE's inputs with the run's training inputs:

* **length** — token counts: means and the two-sample Kolmogorov–Smirnov statistic (scipy ``ks_2samp``);
* **vocabulary** — word unigram distributions (SQuAD-normalised words): Jensen–Shannon divergence
  (base 2, 0 = same, 1 = disjoint) and the out-of-vocabulary rate of new words;
* **embedding** — mean-pooled last hidden states of the run's own model: cosine distance between the two
  centroids and the centroid shift in units of the training inputs' mean distance to their centroid;
* **labels** (when NEW_FILE has them) — label-distribution JS divergence and the change of the primary
  metric (``tunesmith eval`` on NEW_FILE vs the run's validation result).

The verdict follows :data:`THRESHOLDS` — ``retrain`` when the metric dropped or the inputs moved a lot,
``drifting`` when some statistic moved past its warning level, else ``stable`` — and is printed with the
numbers that decided it. Writes ``drift.json`` and ``drift.png`` (length histograms) under ``--out``
(default ``RUN_DIR/drift/``). Cost: one forward pass per input (at most ``max_examples`` per side).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from tunesmith.data.formats import Example, read_source
from tunesmith.evaluate.baselines import PRIMARY_METRIC
from tunesmith.evaluate.metrics import normalize_answer
from tunesmith.infer.batching import collate, model_device
from tunesmith.io import write_bytes_atomic, write_json_atomic
from tunesmith.methods import load_trained
from tunesmith.report.plots import figure, png
from tunesmith.runs import RunDir

THRESHOLDS = {
    "length_ks": (0.2, 0.5),
    "vocab_js": (0.2, 0.5),
    "oov_rate": (0.1, 0.3),
    "embedding_shift": (0.5, 1.0),
    "label_js": (0.1, 0.3),
    "metric_drop": (0.02, 0.05),
}
"""(drifting, retrain) levels per statistic; the verdict is the worst level any statistic reaches."""


Evaluate = Callable[..., dict[str, Any]]
"""``(run_dir, data=file) -> {split: metrics}``: how a run's model scores a file (``api.evaluate``)."""


def input_text(ex: Example) -> str:
    """What the model reads: the text, or the non-assistant turns of a chat."""
    if ex.kind in ("classification", "text"):
        return ex.text or ""
    return "\n".join(m.get("content") or "" for m in ex.messages or [] if m["role"] != "assistant")


def js_divergence(p: Counter, q: Counter) -> float:
    """Jensen–Shannon divergence (base 2) between two count distributions; 0.0 when both are empty."""
    keys = sorted(set(p) | set(q))
    if not keys or not sum(p.values()) or not sum(q.values()):
        return 0.0
    a, b = np.array([p[k] for k in keys], float), np.array([q[k] for k in keys], float)
    return float(jensenshannon(a / a.sum(), b / b.sum(), base=2) ** 2)


def text_stats(train: list[str], new: list[str], tokenizer: Any) -> dict[str, float]:
    """Length (tokens) and vocabulary (words) statistics of ``new`` against ``train``."""
    len_train = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in train]
    len_new = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in new]
    words_train = Counter(w for t in train for w in normalize_answer(t).split())
    words_new = Counter(w for t in new for w in normalize_answer(t).split())
    unseen = sum(c for w, c in words_new.items() if w not in words_train)
    return {
        "length_mean_train": round(float(np.mean(len_train)), 3),
        "length_mean_new": round(float(np.mean(len_new)), 3),
        "length_ks": round(float(ks_2samp(len_train, len_new).statistic), 6),
        "vocab_js": round(js_divergence(words_train, words_new), 6),
        "oov_rate": round(unseen / max(1, sum(words_new.values())), 6),
    }


@torch.no_grad()
def mean_hidden_states(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16) -> np.ndarray:
    """Mean-pooled last-layer hidden state per text, shape (n, hidden)."""
    model.eval()
    device, rows = model_device(model), []
    for start in range(0, len(texts), batch_size):
        ids = [
            tokenizer(t, add_special_tokens=True)["input_ids"] or [tokenizer.eos_token_id]
            for t in texts[start : start + batch_size]
        ]
        batch = {k: v.to(device) for k, v in collate(ids, None, tokenizer.pad_token_id).items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        rows.append(((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy())
    return np.concatenate(rows)


def embedding_stats(train: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """Centroid cosine distance and centroid shift / mean training spread (0 = no shift)."""
    mu_t, mu_n = train.mean(0), new.mean(0)
    cosine = 1 - float(mu_t @ mu_n / (np.linalg.norm(mu_t) * np.linalg.norm(mu_n) + 1e-12))
    spread = float(np.linalg.norm(train - mu_t, axis=1).mean())
    shift = float(np.linalg.norm(mu_n - mu_t)) / spread if spread > 0 else 0.0
    return {"embedding_cosine": round(max(0.0, cosine), 6), "embedding_shift": round(shift, 6)}


def verdict(
    stats: dict[str, Any], thresholds: dict[str, tuple[float, float]] | None = None
) -> tuple[str, list[str]]:
    """``stable`` / ``drifting`` / ``retrain`` and the statistics past their level (default
    :data:`THRESHOLDS`), worst first."""
    reasons: list[tuple[int, str]] = []
    for key, (warn, bad) in (THRESHOLDS if thresholds is None else thresholds).items():
        value = stats.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        level = 2 if value >= bad else 1 if value >= warn else 0
        if level:
            reasons.append((level, f"{key} {value:.4f} >= {bad if level == 2 else warn}"))
    worst = max((lvl for lvl, _ in reasons), default=0)
    return ["stable", "drifting", "retrain"][worst], [r for _, r in sorted(reasons, key=lambda x: -x[0])]


def length_png(train: list[int], new: list[int]) -> bytes:
    """Overlaid density histograms of training and new input lengths (tokens)."""
    fig = figure(7, 3.6)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(train + new, bins=20)
    ax.hist(train, bins=bins, alpha=0.6, density=True, label="training inputs")
    ax.hist(new, bins=bins, alpha=0.6, density=True, label="new inputs")
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel("density")
    ax.legend(fontsize=9)
    return png(fig)


def _metric_change(
    run_dir: Path, new_file: str | Path, summary: dict[str, Any], evaluate: Evaluate
) -> dict[str, Any]:
    task = summary.get("task", "generation")
    metric = PRIMARY_METRIC.get(task)
    before = (summary.get("eval", {}).get("validation", {}).get("tuned") or {}).get(metric)
    now = next(iter(evaluate(run_dir, data=new_file).values()), {}).get(metric)
    if before is None or now is None:
        return {}
    return {
        "metric": metric,
        "metric_before": before,
        "metric_now": now,
        "metric_drop": round(before - now, 6),
    }


def drift_report(
    run_dir: str | Path,
    new_file: str | Path,
    out: str | Path | None = None,
    max_examples: int = 512,
    evaluate: Evaluate | None = None,
) -> dict[str, Any]:
    """Compare ``new_file``'s inputs with the run's training inputs; write drift.json + drift.png.

    ``evaluate(run_dir, data=...)`` (``tunesmith.api.evaluate``, passed in by the CLI: the API sits above this
    package) scores labelled new data with the run's model, for the metric change; without it none is shown.
    """
    run_dir = Path(run_dir)
    model, tokenizer, cfg = load_trained(run_dir)
    labels = RunDir(run_dir).label_names()
    train = read_source(cfg.data.train, cfg.data.format, cfg.data.on_bad_row, labels).examples[:max_examples]
    new = read_source(new_file, cfg.data.format, "skip", labels).examples[:max_examples]
    texts_t, texts_n = [input_text(e) for e in train], [input_text(e) for e in new]
    stats: dict[str, Any] = text_stats(texts_t, texts_n, tokenizer)
    stats.update(embedding_stats(*(mean_hidden_states(model, tokenizer, t) for t in (texts_t, texts_n))))
    if new and new[0].kind == "classification":
        counts = [Counter(e.label for e in examples) for examples in (train, new)]
        stats["label_js"] = round(js_divergence(*counts), 6)
    summary_path = RunDir(run_dir).summary
    labelled = new and new[0].kind in ("classification", "chat")
    if labelled and summary_path.exists() and evaluate is not None:  # labelled: score it
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        stats.update(_metric_change(run_dir, new_file, summary, evaluate))
    label, reasons = verdict(stats)
    result = {"verdict": label, "reasons": reasons, "stats": stats, "n_train": len(train), "n_new": len(new)}
    out_dir = Path(out) if out else run_dir / "drift"
    write_json_atomic(out_dir / "drift.json", result)
    lengths = [
        [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ts] for ts in (texts_t, texts_n)
    ]
    write_bytes_atomic(out_dir / "drift.png", length_png(*lengths))
    return result
