"""Run kinds by name, and which one a config runs as.

    KINDS["lm"].train(cfg)        # what api.train does after kind_of(cfg)

A config with an ``objective`` other than sft runs as that objective's kind (``dpo``, ...). Else it runs as
``staged`` when it has ``stages`` or ``data.tasks``; else by its head (``model.head:
classification`` -> ``head``); else by its method (``feature_extraction`` -> ``features``); else ``lm``.
A new kind (reward model, DPO, GRPO, ...) is a :class:`~tunesmith.pipelines.base.Pipeline` subclass added to
:data:`KINDS` and to the table that selects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.errors import ConfigError
from tunesmith.pipelines import features, head, lm, preference, reward, rl, staged
from tunesmith.pipelines.base import Pipeline
from tunesmith.rag.retrieve import run_index
from tunesmith.runs import Summary, read_run_config
from tunesmith.train.hooks import LoopHooks

KINDS: dict[str, Pipeline] = {
    "lm": lm.LMPipeline(),
    "head": head.HeadPipeline(),
    "features": features.FeaturesPipeline(),
    "staged": staged.StagedPipeline(),
    "dpo": preference.PreferencePipeline(),
    "reward": reward.RewardPipeline(),
    "grpo": rl.GRPOPipeline(),
}
KIND_BY_HEAD = {"classification": "head"}
"""``model.head`` values with their own kind (``lm`` heads run by method)."""
KIND_BY_METHOD = {"feature_extraction": "features"}
"""Methods that train outside the loop."""
KIND_BY_OBJECTIVE = {"dpo": "dpo", "reward": "reward", "grpo": "grpo"}
"""Objectives other than sft: each its own kind, whatever the head or method."""

EVALUATE = {
    "lm": lm.evaluate,
    "head": head.evaluate,
    "features": features.evaluate,
    "staged": staged.evaluate,
    "dpo": preference.evaluate,
    "reward": reward.evaluate,
    "grpo": rl.evaluate,
}
PREDICT = {"head": head.predict, "features": features.predict, "reward": reward.predict}
"""Kinds with their own predict; the others (lm, staged) predict through the LM (``lm.predict``)."""


def kind_of(cfg: RunConfig) -> str:
    """The run kind a config trains as (see the module docstring)."""
    if cfg.objective.name in KIND_BY_OBJECTIVE:
        return KIND_BY_OBJECTIVE[cfg.objective.name]
    if cfg.stages or cfg.data.tasks:
        return "staged"
    return KIND_BY_HEAD.get(cfg.model.head) or KIND_BY_METHOD.get(cfg.method.name) or "lm"


def train(cfg: RunConfig, resume: bool = False, hooks: LoopHooks | None = None) -> Summary:
    """Train ``cfg`` as its kind; returns the summary (also written to ``summary.json``). ``hooks`` observe
    the training loop (:mod:`tunesmith.train.hooks`)."""
    return KINDS[kind_of(cfg)].train(cfg, resume, hooks)


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run, by the kind it trained as."""
    return EVALUATE[kind_of(read_run_config(run_dir))](run_dir, data)


def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: str = "auto",
    index: str | Path | None = None,
    k: int | None = None,
    use_run_index: bool = True,
) -> Path:
    """One prediction per input row of ``data`` into ``out``, by the kind the run trained as; ``index``
    (generation runs only; default the run's ``rag.index`` unless ``use_run_index`` is False) retrieves
    ``k`` (default ``rag.k``) chunks into each prompt first."""
    cfg = read_run_config(run_dir)
    kind_predict = PREDICT.get(kind_of(cfg))
    index, k = run_index(cfg, index, k, use_run_index)
    if index is None:
        return (kind_predict or lm.predict)(run_dir, data, out, fmt)
    if kind_predict is not None:
        raise ConfigError("--index (or rag.index) retrieves context for generation (lm) runs only")
    return lm.predict(run_dir, data, out, fmt, index=index, k=k)
