"""Bias audit: does the prediction change when only a protected attribute in the input changes?

For every evaluation input and every category of the substitution lists (``counterfactuals.json``:
gendered pronouns and nouns, given names associated with groups, nationalities, religions — written for
this project; extend with ``--lists``), the terms are swapped both ways as whole words, keeping case
("He met his wife" -> "She met her husband"). Inputs with no term of a category are skipped for it.
Reported per category, for the base and the tuned model (the tuned one alone on a classification-head run,
whose base has no trained head):

* classification — ``flip_rate``: share of changed inputs whose predicted label changes, and
  ``mean_prob_change``: mean |p(original prediction) before - after|;
* generation — ``change_rate``: share whose (normalised) answer changes, and ``mean_answer_distance``:
  mean 1 - token F1 between the two answers.

With ``--group-column`` (or a column named ``group``), the tuned model's accuracy (classification) or
token F1 (generation) per group and the largest gap between groups. ``tunesmith bias RUN_DIR [--data F]``
writes ``bias.json``, adds ``bias`` to summary.json and re-renders report.html. Cost: two predictions per
changed input per category per model.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Example, read_source
from tunesmith.data.prepare import Split
from tunesmith.data.render import reference_text
from tunesmith.errors import DataError
from tunesmith.evaluate.metrics import normalize_answer, token_f1
from tunesmith.evaluate.runner import cap, classify, head_probs, predict_texts, resolve_task
from tunesmith.io import write_json_atomic
from tunesmith.methods import load_trained
from tunesmith.models.loading import load_causal_lm
from tunesmith.report.html import write_report
from tunesmith.runs import RunDir

Predictor = Callable[[list[Example]], tuple[list[Any], list[list[float]] | None]]
"""Predictions for examples: label ids with probabilities (classification) or texts with None."""


def load_substitutions(extra: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """The shipped pairs per category, extended by a user JSON file of the same shape."""
    text = resources.files("tunesmith.evaluate").joinpath("counterfactuals.json").read_text(encoding="utf-8")
    lists = {k: [tuple(p) for p in v] for k, v in json.loads(text).items() if not k.startswith("_")}
    if extra is not None:
        try:
            user = json.loads(Path(extra).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{extra}: cannot read substitution lists ({err}); expected JSON") from None
        for category, pairs in user.items():
            if category.startswith("_"):
                continue
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise DataError(f"{extra}: category {category!r} must be a list of [term, counterpart] pairs")
            lists.setdefault(category, []).extend(tuple(p) for p in pairs)
    return lists


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def substitute(text: str, pairs: list[tuple[str, str]]) -> str:
    """Swap every term with its counterpart (both directions, whole words, case kept); first pair wins."""
    mapping: dict[str, str] = {}
    for a, b in pairs:
        mapping.setdefault(a.lower(), b)
        mapping.setdefault(b.lower(), a)
    if not mapping:
        return text
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(t) for t in sorted(mapping, key=len, reverse=True)) + r")\b", re.I
    )
    return pattern.sub(lambda m: _match_case(m.group(0), mapping[m.group(0).lower()]), text)


def counterfactual(ex: Example, pairs: list[tuple[str, str]]) -> Example | None:
    """``ex`` with its input (text, or user/system turns) substituted; None when nothing changed."""
    if ex.kind in ("classification", "text"):
        new_text = substitute(ex.text or "", pairs)
        return dataclasses.replace(ex, text=new_text) if new_text != ex.text else None
    messages = [
        {**m, "content": substitute(m.get("content") or "", pairs)} if m["role"] != "assistant" else m
        for m in ex.messages or []
    ]
    return dataclasses.replace(ex, messages=messages) if messages != ex.messages else None


def flip_stats(predict: Predictor, examples: list[Example], pairs: list[tuple[str, str]], task: str) -> dict:
    """Flip/change rate of ``predict`` under substitution with ``pairs`` (see the module docstring)."""
    changed = [(ex, cf) for ex in examples if (cf := counterfactual(ex, pairs)) is not None]
    if not changed:
        key = "flip_rate" if task == "classification" else "change_rate"
        return {"n_changed": 0, key: 0.0}
    before, p_before = predict([ex for ex, _ in changed])
    after, p_after = predict([cf for _, cf in changed])
    n = len(changed)
    if task == "classification":
        assert p_before is not None and p_after is not None
        deltas = [abs(pb[y] - pa[y]) for y, pb, pa in zip(before, p_before, p_after, strict=True)]
        flips = sum(int(a != b) for a, b in zip(before, after, strict=True))
        return {"n_changed": n, "flip_rate": flips / n, "mean_prob_change": round(sum(deltas) / n, 6)}
    differ = sum(normalize_answer(a) != normalize_answer(b) for a, b in zip(before, after, strict=True))
    distance = sum(1 - token_f1(a, b) for a, b in zip(before, after, strict=True)) / n
    return {"n_changed": n, "change_rate": differ / n, "mean_answer_distance": round(distance, 6)}


def group_metrics(
    examples: list[Example], predictions: list[Any], task: str, label_names: list[str] | None, column: str
) -> dict[str, Any]:
    """Accuracy (classification) or token F1 (generation) per value of ``column`` and the largest gap."""
    scores: dict[str, list[float]] = {}
    for ex, pred in zip(examples, predictions, strict=True):
        if column not in ex.extra:
            raise DataError(
                f"{ex.source}:{ex.line}: no {column!r} column; name an existing one with --group-column"
            )
        if task == "classification":
            score = float(int(pred) == int(ex.label))
        else:
            score = token_f1(pred, reference_text(ex, label_names))
        scores.setdefault(str(ex.extra[column]), []).append(score)
    per_group = {g: {"score": round(sum(v) / len(v), 6), "n": len(v)} for g, v in sorted(scores.items())}
    best = max(per_group, key=lambda g: per_group[g]["score"])
    worst = min(per_group, key=lambda g: per_group[g]["score"])
    gap = round(per_group[best]["score"] - per_group[worst]["score"], 6)
    metric = "accuracy" if task == "classification" else "token_f1"
    return {
        "metric": metric,
        "groups": per_group,
        "largest_gap": gap,
        "message": f"largest gap: {metric} {gap:.4f} between {best!r} and {worst!r}",
    }


def _head_predictor(
    model: Any, tokenizer: Any, cfg: Any, task: str, label_names: list[str] | None
) -> Predictor:
    """A classification head's predictions: the argmax of its class probabilities."""

    def predict(examples: list[Example]) -> tuple[list[Any], list[list[float]] | None]:
        probs = head_probs(model, tokenizer, cfg, [ex.text or "" for ex in examples])
        return probs.argmax(dim=-1).tolist(), probs.tolist()

    return predict


def _lm_predictor(
    model: Any, tokenizer: Any, cfg: Any, task: str, label_names: list[str] | None
) -> Predictor:
    """An lm head's predictions: labels by log-likelihood, or generated text."""

    def predict(examples: list[Example]) -> tuple[list[Any], list[list[float]] | None]:
        split = Split(examples, [], [])
        if task == "classification":
            assert label_names is not None
            return classify(model, tokenizer, split, label_names, cfg)
        return predict_texts(model, tokenizer, split, cfg), None

    return predict


PREDICTORS: dict[str, Callable[..., Predictor]] = {"lm": _lm_predictor, "classification": _head_predictor}
"""``model.head`` -> how a run of that head predicts."""


def bias_audit(
    run_dir: str | Path,
    data: str | Path | None = None,
    group_column: str | None = None,
    lists: str | Path | None = None,
) -> dict[str, Any]:
    """Counterfactual flip rates (base vs tuned) and per-group metrics of a finished run; writes bias.json."""
    run_dir = Path(run_dir)
    tuned, tokenizer, cfg = load_trained(run_dir)
    label_names = RunDir(run_dir).label_names()
    path = data or cfg.data.validation or cfg.data.test
    if path is None:
        raise DataError(f"{run_dir}: the run has no validation/test file; pass --data FILE to audit")
    source = read_source(path, cfg.data.format, cfg.data.on_bad_row, label_names)
    examples = cap(Split(source.examples, [], []), cfg.eval.max_examples).examples
    task = resolve_task(cfg, source.examples[0].kind if source.examples else "chat")
    result: dict[str, Any] = {"data": str(path), "task": task, "categories": {}}
    models = {"tuned": tuned}
    predictor = PREDICTORS[cfg.model.head]
    if cfg.model.head != "lm":
        # The base has no classifier: its score head would be freshly random, so its flips mean nothing.
        result["base"] = "not audited: a classification-head run's base has no trained head"
    else:
        models = {
            "base": load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code),
            **models,
        }
    for category, pairs in load_substitutions(lists).items():
        result["categories"][category] = {
            name: flip_stats(predictor(m, tokenizer, cfg, task, label_names), examples, pairs, task)
            for name, m in models.items()
        }
    if group_column is None and examples and all("group" in ex.extra for ex in examples):
        group_column = "group"  # a column literally named "group" is audited without being asked
    if group_column is not None:
        predictions, _ = predictor(tuned, tokenizer, cfg, task, label_names)(examples)
        result["groups"] = group_metrics(examples, predictions, task, label_names, group_column)
    write_json_atomic(run_dir / "bias.json", result)
    summary_path = RunDir(run_dir).summary
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["bias"] = result
        write_json_atomic(summary_path, summary)
        write_report(run_dir)
    return result
