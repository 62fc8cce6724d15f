"""The sweep entry point: resolve, open the study, work, write the outputs."""

from __future__ import annotations

from typing import Any

from tunesmith.sweep.options import SweepOptions
from tunesmith.sweep.outputs import write_outputs
from tunesmith.sweep.study import open_study, resolve, work


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
