"""What a sweep optimises: any number a finished run reports, named by its dotted path.

    eval.validation.tuned.macro_f1   summary.json, as written
    validation.tuned.macro_f1        the same: ``eval.`` may be left out (and macro_f1 is f1_macro)
    timings.train_s                  training seconds (a second objective, to trade quality for time)
    val_loss                         the last validation pass in metrics.jsonl (any key of those rows)

Directions default from the name: losses, perplexities, seconds (``_s``) and memory are minimised, the rest
(scores, accuracies) maximised; ``--direction`` overrides.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import RunError
from tunesmith.runs import RunDir
from tunesmith.tracking.common import numbers

_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "memory", "seconds", "error")
_SUMMARY_NAMES = {"macro_f1": "f1_macro"}  # summary.json's name of a score the validation passes log
_PASS_NAMES = {"f1_macro": "val_macro_f1"}  # the validation passes' name of a summary.json score


def default_direction(path: str) -> str:
    last = path.rsplit(".", 1)[-1].lower()
    lower = last.endswith("_s") or any(word in last for word in _LOWER_IS_BETTER)
    return "minimize" if lower else "maximize"


def _dig(tree: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def metric_value(run: RunDir, summary: dict[str, Any], path: str) -> float:
    """The number at ``path`` for a finished run (see the module docstring for where it is looked up).

    Raises:
        RunError: the run has no number there; the message lists the numbers it has.
    """
    head, _, last = path.rpartition(".")
    alias = f"{head}.{_SUMMARY_NAMES[last]}".lstrip(".") if last in _SUMMARY_NAMES else path
    for candidate in (
        _dig(summary, p) for p in dict.fromkeys([path, f"eval.{path}", alias, f"eval.{alias}"])
    ):
        if isinstance(candidate, int | float) and not isinstance(candidate, bool):
            return float(candidate)
    for row in reversed(run.read_metrics()):
        value = row.get(path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    known = sorted(numbers(summary))
    shown = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
    raise RunError(
        f"objective {path!r}: {run.path} reports no number there. Pass --objective with a dotted path into "
        f"summary.json (or a metrics.jsonl key such as val_loss); this run has: {shown}"
    )


def validation_key(path: str) -> str:
    """The validation-pass score that tracks ``path`` during training (``validation.tuned.macro_f1`` ->
    ``val_macro_f1``, ``val_loss`` -> itself); the pruner reads it when the pass has it."""
    last = path.rsplit(".", 1)[-1]
    return _PASS_NAMES.get(last) or (last if last.startswith("val_") else f"val_{last}")
