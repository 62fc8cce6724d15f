"""The main job: teach the default model a store's fictional catalogue with LoRA on CPU, show before/after.

    tunesmith demo                          # or: make demo
    tunesmith demo --seed 1 --precision fp32
    tunesmith demo --quick                  # a seconds-long smoke version (no targets)

Steps: generate the catalogue and its questions (``runs/demo/data``), train LoRA (``runs/demo``), then score
base and tuned on *differently phrased* held-out questions (correct = the answer contains the right value),
plus a general-knowledge check (short questions and perplexity on general prose) to show nothing broke.

The general check's verdict is a one-sided non-inferiority test on the questions the base answers right
(:func:`general_verdict`): PASS needs the 95 % Wilson lower bound of the share the tuned model still answers
right to reach :data:`TARGETS` ``general_retained_lower_min``. With 148 such questions (the shipped set,
``general_questions.jsonl``) one flipped answer moves the share by 0.7 points, and the bound, not the point
estimate, carries the decision.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from tunesmith.api import train
from tunesmith.config import RunConfig, config_from_dict
from tunesmith.demo.catalogue import answer_contains, generate_demo_data
from tunesmith.evaluate.bootstrap import wilson_interval
from tunesmith.infer.generate import generate_texts, model_device
from tunesmith.io import read_jsonl, write_json_atomic
from tunesmith.methods import load_trained
from tunesmith.train.precision import pick_mixed_precision

# An empty system turn: SmolLM2's template otherwise inserts its own 20-token system prompt, and every
# training token costs CPU time (a 6-token "You are a shop assistant." measured 17 % slower per epoch).
SYSTEM_PROMPT = ""
TARGETS = {
    "tuned_min": 0.80,
    "tuned_goal": 0.90,
    "base_max": 0.10,
    "general_retained_lower_min": 0.60,
    "general_retained_goal": 0.85,
    "confidence": 0.95,
    "total_s_max": 15 * 60,
}
"""The demo's bar. Store questions (held-out phrasings): tuned >= ``tuned_min``, base <= ``base_max``;
``tuned_goal`` (90 %, issue #16's raised bar) is printed as a goal, met by the recipe on seeds 0-2 in fp32
(README), while PASS keeps the 80 % floor so one unlucky store or bf16 rounding does not fail the main
command.
General questions: the 95 % Wilson lower bound of the retained share (the questions the base answers right
that the tuned model still answers right) >= ``general_retained_lower_min``, i.e. with 95 % confidence the
tuned model keeps at least that share of what the base knew (:func:`general_verdict`). That floor, 60 %, is
what the recipe clears (measured lower bounds 72.5 / 70.3 / 61.1 % on seeds 0-2), not the goal of 85 %
(``general_retained_goal``), which no config measured so far reaches (the tuned model loses about a fifth
of the base's general answers); the table prints both goals and whether they were met. Time
(``total_s_max``: 15 minutes on 2 CPU cores) is measured and printed against the budget but is not part of
PASS: the same run took 13.4 min on a quiet machine and 22.5 min beside other jobs, so a time gate would
judge the machine's load, not the demo."""
GENERAL_MAX_NEW_TOKENS = 16
"""Generation budget per general answer: the base's right answers name the value within its first sentence."""
QUICK_GENERAL_QUESTIONS = 16
"""``--quick`` asks only this many general questions (a smoke test, no verdict)."""


def demo_config(
    out_dir: Path, data_dir: Path, quick: bool, seed: int = 0, precision: str = "auto"
) -> RunConfig:
    """The demo's run config — the same schema users write in YAML (see recipes/demo.yaml).

    ``seed`` is the run's seed (LoRA initialisation, batch order); ``precision`` is ``train.precision``
    (``auto`` picks bf16 on CPUs with AVX512-BF16/AMX, fp32 elsewhere).
    """
    raw: dict[str, Any] = {
        "name": out_dir.name,
        "output_dir": str(out_dir.parent),
        "seed": seed,
        "model": {"name": "default"},
        "data": {
            "train": str(data_dir / "train.jsonl"),
            "validation": str(data_dir / "validation.jsonl"),
            "system_prompt": SYSTEM_PROMPT,
            "max_length": 256,
            # The 80 general chats as a KL-to-the-base set, not as replay rows in train.jsonl: at lr 2e-3
            # the worst of seeds 0-2 kept 113 of 148 general answers (retained lower bound 68.9 %) against
            # 102 (61.1 %) with replay rows, store 90.8-96.2 % against 92.1-95.8 % (README).
            "retain": str(data_dir / "retain.jsonl"),
        },
        "method": {"name": "lora", "r": 32, "alpha": 64, "dropout": 0.0},
        # Measured (README): 4 epochs end to end of the cosine schedule (240 steps; 144 steps gave 23 %,
        # 192 gave 70 %, 240 gave 91 %); batch 16 runs ~30 % more tokens/s than 8 on 2 cores (bigger
        # matmuls). lr 2e-3 (3e-3 at batch 8 diverged): with name-first phrasings and the retain set, store
        # 96.2 / 91.2 / 90.8 % on seeds 0-2 (fp32); 1.5e-3 gave 87.9 % (seed 0, replay rows).
        "train": {
            "epochs": 4,
            "batch_size": 16,
            "lr": 2e-3,
            "warmup_steps": 10,
            "scheduler": "cosine",
            "precision": precision,
            "log_every": 5,
        },
        # Answers are <= 14 tokens. The demo's own general check (below) stands in for the probe suite, and
        # the base is scored zero-shot only: the 15-minute budget on 2 cores has no room for more. The
        # safety probe (eval.safety_probe, on by default) stays: base vs tuned refusals in summary.json.
        "eval": {"max_new_tokens": 16, "batch_size": 48, "icl_shots": [0], "probes": False},
    }
    if quick:
        raw["train"].update({"epochs": 1, "max_steps": 2})
        raw["eval"]["max_examples"] = 8
        raw["eval"]["safety_probe"] = False  # 160 generations: the quick check (a test) has no time for them
    return config_from_dict(raw, "demo")


def general_check(
    model: Any, tokenizer: Any, questions: list[dict[str, Any]], text: str, batch_size: int = 48
) -> dict[str, Any]:
    """Share of general questions answered right (greedy, batched), and perplexity on general prose."""

    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q["question"]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    answers = generate_texts(
        model, tokenizer, ids, max_new_tokens=GENERAL_MAX_NEW_TOKENS, batch_size=batch_size, desc="general"
    )
    correct = [
        any(answer_contains(a, ok) for ok in q["answers"]) for a, q in zip(answers, questions, strict=True)
    ]
    enc = tokenizer(text, return_tensors="pt")["input_ids"][:, :1024].to(model_device(model))
    with torch.no_grad():
        loss = float(model(input_ids=enc, labels=enc).loss)
    return {
        "accuracy": sum(correct) / len(correct),
        "correct": correct,
        "perplexity": math.exp(loss),
        "answers": answers,
    }


def retained_share(base_correct: list[bool], tuned_correct: list[bool]) -> float:
    """Share of the questions the base answered right that the tuned model still answers right."""
    kept = [t for b, t in zip(base_correct, tuned_correct, strict=True) if b]
    return sum(kept) / len(kept) if kept else 1.0


def general_verdict(
    base_correct: list[bool],
    tuned_correct: list[bool],
    lower_min: float = TARGETS["general_retained_lower_min"],
    confidence: float = TARGETS["confidence"],
) -> dict[str, Any]:
    """Did the tuned model keep the general answers the base knew? A non-inferiority test, paired by question.

    Of the ``n`` questions the base answers right, the tuned model keeps ``kept``. The retained share's
    ``confidence`` Wilson interval is computed and PASS needs its lower bound ``>= lower_min``: with that
    confidence, at least ``lower_min`` of the base's knowledge survived tuning (the one-sided error rate of
    a wrong PASS is (1 - confidence) / 2). A point-estimate rule on a few questions flips on one answer; a
    bound makes a small sample fail rather than pass by luck, and a large one pass only when the share is
    clearly above ``lower_min``. Answers the tuned model gains are not counted: losing one fact is not paid
    back by guessing another.
    """
    n = sum(base_correct)
    kept = sum(t for b, t in zip(base_correct, tuned_correct, strict=True) if b)
    low, high = wilson_interval(kept, n, confidence)
    return {
        "kept": kept,
        "base_right": n,
        "share": kept / n if n else 1.0,
        "interval": [low, high],
        "confidence": confidence,
        "lower_min": lower_min,
        "passed": n > 0 and low >= lower_min,
    }


def verdict(result: dict[str, Any]) -> bool:
    """PASS: the store targets and the general non-inferiority test (time is reported, not judged)."""
    return bool(
        result["store_accuracy"]["tuned"] >= TARGETS["tuned_min"]
        and result["store_accuracy"]["base"] <= TARGETS["base_max"]
        and result["general_verdict"]["passed"]
    )


def _store_accuracy(run_dir: Path, rows: list[dict[str, Any]], which: str) -> float:
    preds = read_jsonl(run_dir / f"predictions_{which}_validation.jsonl")
    hits = [answer_contains(p["prediction"], r["value"]) for p, r in zip(preds, rows, strict=False)]
    return sum(hits) / max(len(hits), 1)


def _resolved_precision(precision: str) -> str:
    """What ``train.precision`` ran as on this machine: ``bf16`` or ``fp32``."""
    return "bf16" if pick_mixed_precision(precision) == "bf16" else "fp32"


def run_demo(
    out_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0, precision: str = "auto"
) -> dict[str, Any]:
    """Run the whole demo; returns (and writes to ``demo_result.json``) the before/after numbers.

    ``seed`` seeds both the generated store (catalogue, phrasings, training order) and the run (LoRA
    initialisation, batches): a demo that passes for several seeds passes for several stores, not for one
    lucky catalogue. ``precision`` is ``train.precision`` (``auto``, ``fp32``, ``bf16``).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    data_dir = out / "data"
    paths = generate_demo_data(data_dir, seed=seed, n_products=4 if quick else 40)
    cfg = demo_config(out, data_dir, quick, seed=seed, precision=precision)
    summary = train(cfg)
    run_dir = cfg.run_dir
    validation = read_jsonl(paths.validation)[: cfg.eval.max_examples or None]
    model, tokenizer, _ = load_trained(run_dir)
    questions = read_jsonl(paths.general_questions)[: QUICK_GENERAL_QUESTIONS if quick else None]
    text = paths.general_text.read_text(encoding="utf-8")
    t_general = time.perf_counter()
    # Even batches of at most eval.batch_size: 148 questions run as 3 batches of 50, not 48 + 48 + 48 + 4.
    batch = math.ceil(len(questions) / math.ceil(len(questions) / cfg.eval.batch_size))
    with model.disable_adapter():
        general_base = general_check(model, tokenizer, questions, text, batch)
    general_tuned = general_check(model, tokenizer, questions, text, batch)
    general_s = time.perf_counter() - t_general
    train_stats = summary.get("train", {})
    result = {
        "store_accuracy": {
            "base": _store_accuracy(run_dir, validation, "base"),
            "tuned": _store_accuracy(run_dir, validation, "tuned"),
        },
        "general_accuracy": {"base": general_base["accuracy"], "tuned": general_tuned["accuracy"]},
        "general_perplexity": {"base": general_base["perplexity"], "tuned": general_tuned["perplexity"]},
        "general_retained": retained_share(general_base["correct"], general_tuned["correct"]),
        "general_verdict": general_verdict(general_base["correct"], general_tuned["correct"]),
        "general_questions": len(questions),
        "general_answers": {"base": general_base["answers"], "tuned": general_tuned["answers"]},
        "heldout_questions": len(validation),
        "seed": seed,
        "precision": _resolved_precision(precision),
        "tokens_per_s": train_stats.get("tokens_per_s"),
        "train_s": summary["timings"]["train_s"],
        "base_eval_s": summary["timings"].get("base_eval_s"),
        "tuned_eval_s": summary["timings"].get("tuned_eval_s"),
        "general_s": general_s,
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "total_s": time.perf_counter() - t0,
        "targets": TARGETS,
    }
    result["within_budget"] = result["total_s"] <= TARGETS["total_s_max"]
    result["passed"] = verdict(result)
    write_json_atomic(run_dir / "demo_result.json", result)
    print_table(result, quick)
    return result


def print_table(result: dict[str, Any], quick: bool) -> None:
    """The before/after table, the time against the budget and the verdict (last line: ``...: PASS``)."""
    n_general = result.get("general_questions", "")
    rows = [
        ("store questions, held-out phrasing (accuracy)", "store_accuracy", "{:.1%}"),
        (f"general questions ({n_general}, accuracy)", "general_accuracy", "{:.1%}"),
        ("general text perplexity (lower is better)", "general_perplexity", "{:.2f}"),
    ]
    print()
    print(f"{'':48} {'base':>10} {'tuned':>10}")
    for title, key, fmt in rows:
        print(f"{title:48} {fmt.format(result[key]['base']):>10} {fmt.format(result[key]['tuned']):>10}")
    gv = result["general_verdict"]
    low, high = gv["interval"]
    print(
        f"general questions the base got right, still right: {gv['kept']} of {gv['base_right']} = "
        f"{gv['share']:.1%} ({gv['confidence']:.0%} interval {low:.1%} to {high:.1%})"
    )
    minutes = result["total_s"] / 60
    budget = TARGETS["total_s_max"] / 60
    speed = f" at {result['tokens_per_s']:.0f} tokens/s" if result.get("tokens_per_s") else ""
    print(
        f"\n{result['heldout_questions']} held-out questions; seed {result.get('seed', 0)}, "
        f"{result.get('precision', '?')}; training {result['train_s']:.0f}s{speed}, "
        f"demo total {minutes:.1f} min"
    )
    within = "within" if result["total_s"] <= TARGETS["total_s_max"] else "OVER"
    print(
        f"time: {within} the {budget:.0f}-minute budget (2 CPU cores) — reported, not part of PASS: "
        "it measures the machine and its load"
    )
    if quick:
        print("quick mode: a smoke run, not the real targets")
    else:
        verdict_word = "PASS" if result["passed"] else "FAIL"
        print(
            f"targets: store tuned >= {TARGETS['tuned_min']:.0%}, base <= {TARGETS['base_max']:.0%}; general "
            f"retained, {gv['confidence']:.0%} lower bound >= {gv['lower_min']:.0%}: {verdict_word}"
        )
        goal = TARGETS["general_retained_goal"]
        met = "met" if gv["interval"][0] >= goal else "NOT met yet (forgetting is real; see the README)"
        print(f"goal: general retained lower bound >= {goal:.0%}: {met}")
        store_goal = TARGETS["tuned_goal"]
        met = "met" if result["store_accuracy"]["tuned"] >= store_goal else "NOT met"
        print(f"goal: store tuned >= {store_goal:.0%} (issue #16's raised bar): {met}")
