"""What ``tunesmith sweep`` takes: kept apart from the study so the command line parser loads no Optuna."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")


@dataclass
class SweepOptions:
    """What ``tunesmith sweep`` takes (see ``tunesmith sweep --help``)."""

    config: str | Path
    space: str | Path
    trials: int | None = None
    """The study's total trials; None: the grid's size (grid sampler) or 10."""
    timeout: float | None = None
    """Seconds for this worker; the trial in flight at the limit finishes."""
    sampler: str = "tpe"
    storage: str | None = None
    objectives: list[str] = field(default_factory=lambda: ["val_loss"])
    directions: list[str] | None = None
    pruner: str = "median"
    prune_after: int = 2
    """Trials that finish before the pruner may stop one (its view of a typical trial)."""
    prune_warmup: int = 0
    """Training steps of a trial before the pruner may stop it. Early scores are noise: in the emotion sweep
    the median pruner stopped a trial at step 25 with macro-F1 0.313, below the median of 0.386 and 0.307,
    and the trial that scored 0.307 there ended at 0.720."""
    startup_trials: int | None = None
    """TPE: trials drawn at random before its model of the space is used; None: a third of the budget,
    2 to 10 (Optuna's fixed 10 would leave a 2-hour sweep of ~8 trials entirely random)."""
    out: str | Path | None = None
    study_name: str | None = None
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
