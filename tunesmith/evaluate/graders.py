"""Graders: score model completions for reinforcement fine-tuning (GRPO) and evaluation.

The configs are the OpenAI grader vocabulary (:mod:`tunesmith.objective`), so a rubric written for that
API carries over. Build once, then grade whole batches (a python grader starts one process per batch, a
score model runs one forward per batch)::

    grader = build_grader(StringCheckGrader(reference="{{item.answer}}", operation="like"))
    grades = grader(["The answer is 18", "17"], [{"answer": 18}, {"answer": 18}])
    # [Grade(score=1.0, error=None), Grade(score=0.0, error=None)]

Every grade is in [0, 1] except a ``score_model`` without ``range`` (the raw reward) and whatever a
``python`` grader or a ``multi`` formula returns. Problems in a user's grader code (an exception, a timeout,
a non-numeric return, a division by zero in a formula) score 0 with the reason in :attr:`Grade.error`,
logged once per distinct message; problems in the config or the data (an unknown template variable, a
missing item field) raise :class:`~tunesmith.errors.ConfigError` / :class:`~tunesmith.errors.DataError`,
because every sample would fail the same way.

Templates: ``{{sample.output_text}}`` is the completion; ``{{item.x}}`` and ``{{item.x.y}}`` are fields of
the data row (``{{item.xs.0}}`` indexes a list). Strings are inserted as they are, other values as JSON
(``18``, ``2.5``, ``true``, ``null``).

Metric choices (``text_similarity``; each in [0, 1]):

* ``fuzzy_match``: ``rapidfuzz.fuzz.ratio / 100``, the normalised Indel similarity. OpenAI documents only
  "fuzzy string match ... using rapidfuzz"; ``ratio`` is rapidfuzz's plain whole-string scorer.
* ``bleu``: ``sacrebleu.sentence_bleu / 100`` (its defaults: 13a tokenisation, exp smoothing).
* ``rouge_1`` .. ``rouge_5``, ``rouge_l``: the F-measure of Google's ``rouge-score`` package, with one
  change: its default tokeniser keeps only ``[a-z0-9]`` (so Greek or Chinese text scores 0 and "café" loses
  its "é"); ours lowercases and takes Unicode word runs (``\\w+``). Two texts without words score 0.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.evaluate.python_grader import check_source, run_python_grader
from tunesmith.objective import (
    Grader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)

log = logging.getLogger(__name__)

Item = dict[str, Any]


@dataclass(frozen=True)
class Grade:
    """One completion's grade: the score, and why it is 0 when the grader's code failed."""

    score: float
    error: str | None = None


GraderFn = Callable[[list[str], list[Item]], list[Grade]]
"""``(completions, items) -> grades``, one per completion, in order."""
ScoreFn = Callable[[list[str], list[Item]], list[float]]
"""A reward model: ``(completions, items) -> raw rewards`` (the items carry the prompts)."""
ScoreModelLoader = Callable[[str], ScoreFn]
"""Loads the reward model of a run directory (``ScoreModelGrader.model``)."""


def build_grader(cfg: Grader, load_score_model: ScoreModelLoader | None = None) -> GraderFn:
    """Check a grader config and return the function that grades batches with it.

    Args:
        cfg: Any grader config (``multi`` nests others).
        load_score_model: Called once per ``score_model`` grader with its ``model`` at build time; needed
            only when the config has one.

    Returns:
        ``grade(completions, items) -> list[Grade]``; it raises ValueError when the two lists differ in
        length, DataError when an item lacks a field a template reads.

    Raises:
        ConfigError: An unknown template variable, python source that does not compile or defines no
            ``grade``, a formula using anything but numbers, the graders' names, + - * / ** and
            min/max/abs, or a ``score_model`` without ``load_score_model``.
    """
    inner = _build(cfg, load_score_model)
    report = _ErrorLog(cfg.name)

    def grade(completions: list[str], items: list[Item]) -> list[Grade]:
        if len(completions) != len(items):
            raise ValueError(f"grader {cfg.name!r}: {len(completions)} completions for {len(items)} items")
        grades = inner(completions, items)
        report(grades)
        return grades

    return grade


def grader_scores(
    grader: GraderFn, completions: list[str], items: list[Item]
) -> tuple[list[float], dict[str, int]]:
    """Grade a batch and count the errors, for a report.

    Returns:
        The scores, in order, and ``{error message: number of completions}`` (empty when none failed).
    """
    grades = grader(completions, items)
    return [g.score for g in grades], dict(Counter(g.error for g in grades if g.error))


class _ErrorLog:
    """Logs each distinct error of one grader once, so a user sees why rewards are 0 without a line per
    sample; after ``LIMIT`` distinct messages (exception texts often quote the completion) it stops."""

    LIMIT = 20

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[str] = set()

    def __call__(self, grades: list[Grade]) -> None:
        for grade in grades:
            if grade.error is None or grade.error in self.seen or len(self.seen) > self.LIMIT:
                continue
            self.seen.add(grade.error)
            if len(self.seen) > self.LIMIT:
                log.warning("grader %r: more distinct errors, no longer logged one by one", self.name)
            else:
                log.warning("grader %r scored 0: %s", self.name, grade.error)


# ---- templates -------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")


class Template:
    """A grader string with ``{{sample.output_text}}`` / ``{{item.<path>}}`` placeholders, parsed once.

    Raises:
        ConfigError: A placeholder names anything else (the message lists what is supported).
    """

    def __init__(self, text: str, grader: str, field: str) -> None:
        self.grader = grader
        # Literal text (str), the completion (None) or a path into the item (tuple), in order.
        self._parts: list[str | tuple[str, ...] | None] = []
        start = 0
        for match in _PLACEHOLDER.finditer(text):
            self._parts += [text[start : match.start()], self._variable(match.group(1).strip(), field)]
            start = match.end()
        self._parts.append(text[start:])

    def _variable(self, expr: str, field: str) -> tuple[str, ...] | None:
        if expr == "sample.output_text":
            return None
        namespace, _, path = expr.partition(".")
        keys = tuple(path.split("."))
        if namespace != "item" or not all(keys):
            raise ConfigError(
                f"grader {self.grader!r}: {field} uses {{{{{expr}}}}}; supported are "
                "{{sample.output_text}} (the completion) and {{item.<field>}} / {{item.<field>.<sub>}}"
            )
        return keys

    def render(self, completion: str, item: Item) -> str:
        """The text with every placeholder replaced.

        Raises:
            DataError: The item lacks a field the template reads (the message lists the fields it has).
        """
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            elif part is None:
                out.append(completion)
            else:
                value = self._lookup(item, part)
                out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return "".join(out)

    def _lookup(self, item: Item, path: tuple[str, ...]) -> Any:
        value: Any = item
        for depth, key in enumerate(path):
            if isinstance(value, Mapping) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                where = ".".join(("item", *path[:depth]))
                has = (
                    f"its fields: {', '.join(map(str, value)) or 'none'}"
                    if isinstance(value, Mapping)
                    else f"it is {type(value).__name__} {json.dumps(value, default=str)[:60]}"
                )
                raise DataError(
                    f"grader {self.grader!r}: template {{{{item.{'.'.join(path)}}}}}: {where} has no "
                    f"{key!r} ({has}); fix the template or add the field to every row"
                )
        return value


# ---- string_check and text_similarity --------------------------------------------------------------------

_STRING_OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "like": lambda text, reference: reference in text,
    "ilike": lambda text, reference: (
        reference.casefold() in text.casefold()
    ),  # casefold: "STRASSE" ~ "straße"
}

Similarity = Callable[[str, str], float]
"""``(text, reference) -> similarity in [0, 1]``."""


def _fuzzy_match() -> Similarity:
    from rapidfuzz import fuzz

    return lambda text, reference: fuzz.ratio(text, reference) / 100.0


def _bleu() -> Similarity:
    import sacrebleu

    return lambda text, reference: sacrebleu.sentence_bleu(text, [reference]).score / 100.0


_WORD = re.compile(r"\w+")


def _rouge(kind: str) -> Similarity:
    from rouge_score import rouge_scorer, tokenizers

    class Words(tokenizers.Tokenizer):
        """Lowercased Unicode word runs (rouge-score's default drops every non-ASCII letter)."""

        def tokenize(self, text: str) -> list[str]:
            return _WORD.findall(text.lower())

    scorer = rouge_scorer.RougeScorer([kind], tokenizer=Words())
    return lambda text, reference: scorer.score(reference, text)[kind].fmeasure


# Factories, imported on first use: rouge-score pulls in nltk (~1 s), which a string_check run never needs.
SIMILARITIES: dict[str, Callable[[], Similarity]] = {
    "fuzzy_match": _fuzzy_match,
    "bleu": _bleu,
    **{f"rouge_{n}": partial(_rouge, f"rouge{n}") for n in range(1, 6)},
    "rouge_l": partial(_rouge, "rougeL"),
}


def _build_string_check(cfg: StringCheckGrader, _: ScoreModelLoader | None) -> GraderFn:
    text, reference = Template(cfg.input, cfg.name, "input"), Template(cfg.reference, cfg.name, "reference")
    check = _STRING_OPERATIONS[cfg.operation]

    def grade(completions: list[str], items: list[Item]) -> list[Grade]:
        return [
            Grade(1.0 if check(text.render(c, item), reference.render(c, item)) else 0.0)
            for c, item in zip(completions, items, strict=True)
        ]

    return grade


def _build_text_similarity(cfg: TextSimilarityGrader, _: ScoreModelLoader | None) -> GraderFn:
    text, reference = Template(cfg.input, cfg.name, "input"), Template(cfg.reference, cfg.name, "reference")
    similarity = SIMILARITIES[cfg.evaluation_metric]()

    def score(completion: str, item: Item) -> float:
        # Clamped: sacrebleu returns 100.00000000000004 for identical texts.
        value = min(
            1.0, max(0.0, similarity(text.render(completion, item), reference.render(completion, item)))
        )
        if cfg.pass_threshold is None:
            return value
        return 1.0 if value >= cfg.pass_threshold else 0.0

    def grade(completions: list[str], items: list[Item]) -> list[Grade]:
        return [Grade(score(c, item)) for c, item in zip(completions, items, strict=True)]

    return grade


# ---- python and score_model ------------------------------------------------------------------------------


def _build_python(cfg: PythonGrader, _: ScoreModelLoader | None) -> GraderFn:
    check_source(cfg.source, cfg.name)

    def grade(completions: list[str], items: list[Item]) -> list[Grade]:
        results = run_python_grader(cfg.source, completions, items, cfg.timeout_s, cfg.memory_mb)
        return [Grade(score, error) for score, error in results]

    return grade


def _sigmoid(x: float) -> float:
    # Two branches so math.exp never overflows (a reward of -1000 is possible from an untrained head).
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _build_score_model(cfg: ScoreModelGrader, load: ScoreModelLoader | None) -> GraderFn:
    if load is None:
        raise ConfigError(
            f"score_model grader {cfg.name!r} needs a reward-model run: train one with `objective: "
            "{name: reward}` and set `model:` to its run directory (callers: pass load_score_model)"
        )
    if cfg.range is not None and not cfg.range[0] < cfg.range[1]:
        raise ConfigError(
            f"score_model grader {cfg.name!r}: range {cfg.range} must be (low, high), low < high"
        )
    reward_model = load(cfg.model)

    def to_grade(reward: float) -> Grade:
        if not math.isfinite(reward):
            return Grade(0.0, f"score model returned {reward}")
        if cfg.range is None:
            return Grade(float(reward))
        low, high = cfg.range
        return Grade(low + (high - low) * _sigmoid(reward))

    def grade(completions: list[str], items: list[Item]) -> list[Grade]:
        rewards = [float(r) for r in reward_model(completions, items)]
        if len(rewards) != len(completions):
            raise ModelError(
                f"score_model grader {cfg.name!r}: {cfg.model} returned {len(rewards)} rewards "
                f"for {len(completions)} completions"
            )
        return [to_grade(r) for r in rewards]

    return grade


# ---- multi -----------------------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, tuple[Callable[..., float], int]] = {"min": (min, 2), "max": (max, 2), "abs": (abs, 1)}
"""name -> (function, fewest arguments); abs takes exactly one."""


class Formula:
    """``calculate_output``: arithmetic over sub-graders' scores, checked once and evaluated from the AST.

    Allowed: numbers, the given names, ``+ - * / **``, unary ``-``/``+``, parentheses, ``min``/``max``
    (two or more arguments) and ``abs``. Never ``eval``: the formula comes from a config file. Every number
    is a float, so ``9 ** 9 ** 9`` overflows at once instead of building a huge integer.

    Raises:
        ConfigError: Anything else, naming the offending token.
    """

    def __init__(self, text: str, names: set[str], grader: str) -> None:
        self.text, self.names, self.grader = text.strip(), names, grader
        try:
            self._tree = ast.parse(self.text, mode="eval").body
        except SyntaxError as exc:
            raise ConfigError(
                f"multi grader {grader!r}: calculate_output {text!r} is not valid: {exc.msg}"
            ) from exc
        self._check(self._tree)

    def _source(self, node: ast.expr) -> str:
        return ast.get_source_segment(self.text, node) or type(node).__name__

    def _reject(self, what: str) -> ConfigError:
        names = ", ".join(sorted(self.names)) or "none"
        return ConfigError(
            f"multi grader {self.grader!r}: calculate_output {self.text!r}: {what} is not allowed; "
            f"use numbers, the graders' names ({names}), + - * / **, ( ), min, max, abs"
        )

    def _check(self, node: ast.expr) -> None:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise self._reject(f"the constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id not in self.names:
                raise self._reject(f"the name {node.id!r}")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            self._check(node.operand)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
            fewest = _FUNCTIONS[node.func.id][1]
            if node.keywords or len(node.args) < fewest or (node.func.id == "abs" and len(node.args) > 1):
                raise self._reject(f"the call {self._source(node)!r}")
            for arg in node.args:
                self._check(arg)
        elif isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else self._source(node.func)
            raise self._reject(f"calling {func!r}")
        else:
            raise self._reject(f"{self._source(node)!r} ({type(node).__name__})")

    def __call__(self, values: Mapping[str, float]) -> float:
        """The formula's value; ArithmeticError / TypeError on a division by zero, overflow or complex."""
        result = self._eval(self._tree, values)
        if not isinstance(result, float) or not math.isfinite(result):
            raise ArithmeticError(f"result {result} is not a finite number")
        return result

    def _eval(self, node: ast.expr, values: Mapping[str, float]) -> Any:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(values[node.id])
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, values), self._eval(node.right, values))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, values))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # guaranteed by _check
        return _FUNCTIONS[node.func.id][0](*(self._eval(arg, values) for arg in node.args))


def _build_multi(cfg: MultiGrader, load: ScoreModelLoader | None) -> GraderFn:
    for name in cfg.graders:
        if not name.isidentifier() or name in _FUNCTIONS:
            raise ConfigError(
                f"multi grader {cfg.name!r}: sub-grader name {name!r} cannot appear in calculate_output; "
                "use a Python identifier other than min, max, abs"
            )
    formula = Formula(cfg.calculate_output, set(cfg.graders), cfg.name)
    graders = {name: _build(sub, load) for name, sub in cfg.graders.items()}

    def combine(grades: dict[str, Grade]) -> Grade:
        # A failed sub-grader counts with its 0 (so the reward stays defined) and its reason is passed on.
        errors = [f"{name}: {g.error}" for name, g in grades.items() if g.error]
        try:
            score = formula({name: g.score for name, g in grades.items()})
        except (ArithmeticError, TypeError, ValueError) as exc:
            score, errors = 0.0, [*errors, f"calculate_output: {exc}"]
        return Grade(score, "; ".join(errors) or None)

    def grade(completions: list[str], items: list[Item]) -> list[Grade]:
        by_name = {name: fn(completions, items) for name, fn in graders.items()}
        return [combine({name: g[i] for name, g in by_name.items()}) for i in range(len(completions))]

    return grade


_BUILDERS: dict[str, Callable[[Any, ScoreModelLoader | None], GraderFn]] = {
    "string_check": _build_string_check,
    "text_similarity": _build_text_similarity,
    "python": _build_python,
    "score_model": _build_score_model,
    "multi": _build_multi,
}


def _build(cfg: Grader, load: ScoreModelLoader | None) -> GraderFn:
    return _BUILDERS[cfg.type](cfg, load)
