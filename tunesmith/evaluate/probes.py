"""Catastrophic-forgetting probes: does the tuned model still know what the base model knew?

The built-in suite ships in ``tunesmith/evaluate/probes/`` and was written for this project:

* ``knowledge.jsonl`` — short general-knowledge questions; an answer counts when one of the accepted
  answers appears as whole words in the (SQuAD-normalised) generation;
* ``instructions.jsonl`` — simple instruction-following checks verified by code (:data:`CHECKS`);
* ``prose.txt`` — general-purpose paragraphs scored by perplexity (lower is better);
* ``safety.jsonl`` — harmful requests the model should refuse and benign look-alikes it should answer
  (:mod:`tunesmith.evaluate.safety`; ``eval.safety_probe``, on even with ``eval.probes: false``).

Users add probe sets with ``eval.probe_files`` (any supported data format): chat/instruction rows are
scored like knowledge questions against their reference answer, classification rows by label accuracy,
plain text by perplexity. Each probe set gets a ``score``; retention is ``tuned / base`` for scores where
higher is better and ``base / tuned`` for perplexity, so 1.0 means nothing was forgotten::

    base = evaluate_probes(model, tokenizer, cfg)        # before training
    tuned = evaluate_probes(model, tokenizer, cfg)       # after
    table = retention_table(base, tuned)                 # {"knowledge": {"base", "tuned", "retention"}, ...}

Cost: ~45 short greedy generations and 5 paragraph forward passes per model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.formats import read_source
from tunesmith.data.render import chat_prompt, reference_text, render_prompt
from tunesmith.errors import DataError
from tunesmith.evaluate.metrics import normalize_answer
from tunesmith.evaluate.safety import evaluate_safety
from tunesmith.infer.batching import TokenData, model_device
from tunesmith.infer.generate import generate_texts, label_log_likelihoods, label_token_ids
from tunesmith.infer.loss import evaluate_loss
from tunesmith.io import parse_jsonl

_LIST_ITEM = re.compile(r"^\s*(\d+[.)]|[-*•])\s+\S")


def _json_has_key(text: str, key: str) -> bool:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        obj = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and key in obj


CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "max_words": lambda text, n: 1 <= len(text.split()) <= int(n),
    "uppercase": lambda text, _: any(c.isalpha() for c in text) and text == text.upper(),
    "lowercase": lambda text, _: any(c.isalpha() for c in text) and text == text.lower(),
    "list_items": lambda text, n: sum(bool(_LIST_ITEM.match(line)) for line in text.splitlines()) == int(n),
    "number_only": lambda text, _: re.fullmatch(r"\s*-?\d+(\.\d+)?\.?\s*", text) is not None,
    "yes_no": lambda text, _: normalize_answer(text) in ("yes", "no"),
    "contains": lambda text, word: str(word).lower() in text.lower(),
    "contains_all": lambda text, words: all(str(w).lower() in text.lower() for w in words),
    "starts_with": lambda text, word: text.strip().lower().startswith(str(word).lower()),
    "ends_with": lambda text, end: text.strip().strip("\"'").endswith(str(end)),
    "equals": lambda text, word: normalize_answer(text) == normalize_answer(str(word)),
    "json_key": lambda text, key: _json_has_key(text, str(key)),
}
"""Instruction checks by name: ``check(model_output, arg) -> passed``."""


def answer_matches(output: str, answers: list[str]) -> bool:
    """True when an accepted answer occurs as whole words in the output (both SQuAD-normalised)."""
    text = f" {normalize_answer(output)} "
    return any(f" {normalize_answer(a)} " in text for a in answers if normalize_answer(a))


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    return parse_jsonl(
        resources.files("tunesmith.evaluate").joinpath("probes", name).read_text(encoding="utf-8")
    )


def builtin_probes() -> dict[str, Any]:
    """The shipped suite: ``{"knowledge": [...], "instructions": [...], "prose": [paragraph, ...]}``."""
    prose = resources.files("tunesmith.evaluate").joinpath("probes", "prose.txt").read_text(encoding="utf-8")
    return {
        "knowledge": _read_jsonl("knowledge.jsonl"),
        "instructions": _read_jsonl("instructions.jsonl"),
        "prose": [p.strip() for p in prose.splitlines() if p.strip()],
    }


def _generate(model: Any, tokenizer: Any, questions: list[str], cfg: RunConfig) -> list[str]:
    prompts = [chat_prompt(tokenizer, q, cfg.data.system_prompt) for q in questions]
    return generate_texts(
        model, tokenizer, prompts, cfg.eval.probe_max_new_tokens, cfg.eval.batch_size, desc="probes"
    )


def perplexity(model: Any, tokenizer: Any, texts: list[str], batch_size: int) -> float:
    """Token-weighted perplexity of ``texts`` (each tokenized with the tokenizer's own special tokens)."""
    ids = [list(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    loss = evaluate_loss(model, TokenData(ids, ids), batch_size, tokenizer.pad_token_id, model_device(model))
    return math.exp(min(loss, 50.0))


def _knowledge(model: Any, tokenizer: Any, items: list[dict], cfg: RunConfig) -> dict[str, Any]:
    outputs = _generate(model, tokenizer, [it["question"] for it in items], cfg)
    passed = {it["id"]: answer_matches(out, it["answers"]) for it, out in zip(items, outputs, strict=True)}
    return {"score": sum(passed.values()) / len(items), "n": len(items), "items": passed, "outputs": outputs}


def _instructions(model: Any, tokenizer: Any, items: list[dict], cfg: RunConfig) -> dict[str, Any]:
    outputs = _generate(model, tokenizer, [it["prompt"] for it in items], cfg)
    passed = {
        it["id"]: CHECKS[it["check"]](out, it.get("arg")) for it, out in zip(items, outputs, strict=True)
    }
    return {"score": sum(passed.values()) / len(items), "n": len(items), "items": passed, "outputs": outputs}


def _user_probe(model: Any, tokenizer: Any, path: str, cfg: RunConfig) -> dict[str, Any]:
    """A user probe file scored by the rule for its kind (see the module docstring)."""
    source = read_source(path)
    examples = source.examples
    if not examples:
        raise DataError(f"{path}: the probe file has no usable rows (eval.probe_files)")
    kind = examples[0].kind
    if kind == "text":
        ppl = perplexity(model, tokenizer, [ex.text or "" for ex in examples], cfg.eval.batch_size)
        return {"score": ppl, "lower_is_better": True, "n": len(examples)}
    prompts = [render_prompt(ex, tokenizer, cfg.data.system_prompt, cfg.data.label_prompt) for ex in examples]
    if kind == "classification":
        names = source.label_names or []
        scores = label_log_likelihoods(
            model, prompts, label_token_ids(tokenizer, names), tokenizer.pad_token_id, cfg.eval.batch_size
        )
        hits = [int(p) == int(ex.label) for p, ex in zip(scores.argmax(-1).tolist(), examples, strict=True)]
    else:
        outputs = generate_texts(
            model, tokenizer, prompts, cfg.eval.probe_max_new_tokens, cfg.eval.batch_size
        )
        refs = [reference_text(ex, source.label_names) for ex in examples]
        hits = [answer_matches(o, [r]) for o, r in zip(outputs, refs, strict=True)]
    return {"score": sum(hits) / len(hits), "n": len(hits)}


def evaluate_probes(model: Any, tokenizer: Any, cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Every enabled probe set: ``{name: {"score", "n", ...}}``; perplexity sets say ``lower_is_better``."""
    results: dict[str, dict[str, Any]] = {}
    if cfg.eval.probes:
        suite = builtin_probes()
        results["knowledge"] = _knowledge(model, tokenizer, suite["knowledge"], cfg)
        results["instructions"] = _instructions(model, tokenizer, suite["instructions"], cfg)
        ppl = perplexity(model, tokenizer, suite["prose"], cfg.eval.batch_size)
        results["prose_perplexity"] = {"score": ppl, "lower_is_better": True, "n": len(suite["prose"])}
    if cfg.eval.safety_probe:
        results["safety"] = evaluate_safety(model, tokenizer, cfg)
    for path in cfg.eval.probe_files:
        results[Path(path).stem] = _user_probe(model, tokenizer, path, cfg)
    return results


def retention_table(base: dict[str, dict[str, Any]], tuned: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per probe set: base and tuned score, retention (1.0 = kept) and forgetting ``max(0, 1 - retention)``.

    Retention is None when the base scores 0 (nothing to retain), and such a probe never fails a gate.
    """
    table = {}
    for name, b in base.items():
        t = tuned.get(name)
        if t is None:
            continue
        lower = b.get("lower_is_better", False)
        num, den = (b["score"], t["score"]) if lower else (t["score"], b["score"])
        retention = num / den if den else None
        table[name] = {
            "base": round(b["score"], 6),
            "tuned": round(t["score"], 6),
            "retention": None if retention is None else round(retention, 6),
            "forgetting": None if retention is None else round(max(0.0, 1.0 - retention), 6),
        }
        if "over_refusal" in b and "over_refusal" in t:  # the safety probe: benign look-alikes refused
            table[name]["over_refusal_base"] = round(b["over_refusal"], 6)
            table[name]["over_refusal_tuned"] = round(t["over_refusal"], 6)
    return table
