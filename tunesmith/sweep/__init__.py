"""Hyperparameter sweeps on Optuna: ``tunesmith sweep CONFIG --space SPACE.yaml`` (docs/sweeps.md).

    from tunesmith.sweep import SweepOptions, sweep
    result = sweep(SweepOptions("recipes/lora.yaml", "space.yaml", trials=8, sampler="random"))

:mod:`~tunesmith.sweep.space` reads the space file, :mod:`~tunesmith.sweep.objective` finds the number a run
is judged by, :mod:`~tunesmith.sweep.study` runs the trials, :mod:`~tunesmith.sweep.outputs` writes the
table, ``best.yaml`` and the report.
"""

from __future__ import annotations

from typing import Any

from tunesmith.sweep.outputs import write_outputs
from tunesmith.sweep.study import SweepOptions, open_study, resolve, work


def sweep(opts: SweepOptions) -> dict[str, Any]:
    """Run this worker's share of the study (continuing it if it exists) and write the sweep's outputs.

    Returns ``{"headers", "rows", "best" (an optuna FrozenTrial or None), "paths", "ran", "dir"}``.
    """
    resolved = resolve(opts)
    study = open_study(resolved)
    try:
        ran = work(resolved, study)
    finally:  # Ctrl-C or a failed objective still leaves the table and report of what finished
        result = write_outputs(resolved, study)
    return {**result, "ran": ran, "dir": resolved.dir}


__all__ = ["SweepOptions", "sweep"]
