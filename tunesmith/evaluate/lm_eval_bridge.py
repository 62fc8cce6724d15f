"""Bridge to EleutherAI's lm-evaluation-harness, for users who have it and the task data locally.

tunesmith does not depend on ``lm_eval`` (it is large and downloads task data); this runs only when it is
importable::

    results = run_lm_eval("runs/x", tasks=["hellaswag"], limit=100)   # lm_eval's results dict

The run's model is passed as lm-eval's ``hf`` model: ``pretrained=<base>`` plus ``peft=<run>/adapter`` for
adapter runs, or ``pretrained=<run>/model`` for full fine-tunes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.models.loading import resolve_model_path
from tunesmith.runs import RunDir, read_run_config


def run_lm_eval(
    run_dir: str | Path, tasks: list[str], limit: int | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Run lm-evaluation-harness ``tasks`` on a finished run's model; returns lm_eval's results.

    Raises:
        TunesmithError: ``lm_eval`` is not installed (the message says how to install it).
    """
    try:
        import lm_eval  # deferred: lm_eval is an optional install
    except ImportError:
        raise TunesmithError(
            "the lm-eval bridge needs lm-evaluation-harness: `pip install lm-eval` (and the task data "
            "available locally, e.g. HF_DATASETS_OFFLINE=1 with a populated cache); tunesmith does not "
            "install it for you"
        ) from None
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    run = RunDir(run_dir)
    if run.model.is_dir():
        model_args = f"pretrained={run.model}"
    else:
        model_args = f"pretrained={resolve_model_path(cfg.model.name)},peft={run.adapter}"
    return lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=tasks, limit=limit, batch_size=batch_size
    )
