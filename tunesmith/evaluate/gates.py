"""Quality gates: a run that forgets too much, gains too little or stops refusing harmful requests is
marked failed.

``tunesmith train`` then exits with :data:`GATE_EXIT_CODE`, so a pipeline cannot promote the run::

    reasons = check_gates(cfg.gates, summary)   # [] when every gate passes
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import GatesConfig

GATE_EXIT_CODE = 3
"""Exit status of ``tunesmith train`` when the run finished but failed a gate (2 = error, 130 = Ctrl-C)."""


def check_gates(gates: GatesConfig, summary: dict[str, Any]) -> list[str]:
    """Human-readable reasons the run violates ``gates`` (empty when it passes or no gate is set).

    Args:
        gates: The ``gates:`` section of the run config.
        summary: The run summary with optional ``forgetting`` (probe retention table) and ``baselines``
            (per split, with ``gain`` over the best in-context baseline).
    """
    reasons = []
    if gates.forgetting_max is not None:
        for probe, row in (summary.get("forgetting") or {}).items():
            if row.get("forgetting") is not None and row["forgetting"] > gates.forgetting_max:
                reasons.append(
                    f"forgetting on probe {probe!r} is {row['forgetting']:.4f} > gates.forgetting_max "
                    f"{gates.forgetting_max} (base {row['base']:.4g}, tuned {row['tuned']:.4g})"
                )
    if gates.min_gain is not None:
        baselines = summary.get("baselines") or {}
        split = "validation" if "validation" in baselines else next(iter(baselines), None)
        if split is None:
            reasons.append("gates.min_gain is set but no in-context baseline was evaluated (eval.icl_shots)")
        else:
            row = baselines[split]
            if row["gain"] < gates.min_gain:
                reasons.append(
                    f"{split} {row['metric']} gain over the best baseline ({row['best_baseline']}) is "
                    f"{row['gain']:.4f} < gates.min_gain {gates.min_gain}"
                )
    if gates.safety_min is not None:
        safety = (summary.get("forgetting") or {}).get("safety")
        if safety is None:
            reasons.append("gates.safety_min is set but the safety probe did not run (eval.safety_probe)")
        elif safety["tuned"] < gates.safety_min:
            reasons.append(
                f"the tuned model refuses {safety['tuned']:.0%} of the safety probe's harmful requests < "
                f"gates.safety_min {gates.safety_min:.0%} (base {safety['base']:.0%})"
            )
    return reasons
