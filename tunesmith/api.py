"""The Python API: what the CLI and users call.

import tunesmith
summary = tunesmith.train("recipes/lora.yaml", overrides=["train.max_steps=50"])
metrics = tunesmith.evaluate("runs/lora-demo", data="new.jsonl")
tunesmith.predict("runs/lora-demo", data="questions.jsonl", out="answers.jsonl")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig, apply_overrides, config_from_dict, load_config
from tunesmith.pipelines import registry
from tunesmith.pipelines.base import write_predictions
from tunesmith.runs import read_run_config
from tunesmith.train.hooks import LoopHooks


def _as_config(config: RunConfig | str | Path | None, overrides: list[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            raw = config.model_dump(mode="json")
            return config_from_dict(apply_overrides(raw, overrides), "<config + overrides>")
        return config
    return load_config(config, overrides)


def train(
    config: RunConfig | str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    hooks: LoopHooks | None = None,
) -> dict[str, Any]:
    """Prepare data, evaluate the base, train, save, evaluate the tuned model, write the run directory.

    Returns the summary (also written to ``summary.json``). Ctrl-C saves a checkpoint; ``resume=True``
    continues. The run kind (lm, head, features, staged) is chosen by
    :func:`tunesmith.pipelines.registry.kind_of`. ``hooks`` see every metrics row and validation pass and
    may stop the run (:class:`~tunesmith.train.hooks.LoopHooks`; ``tunesmith sweep`` prunes with them).
    """
    return dict(registry.train(_as_config(config, overrides), resume, hooks))


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run on ``data`` (default: the run's own validation/test splits)."""
    return registry.evaluate(run_dir, data)


def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: str = "auto",
    index: str | Path | None = None,
    k: int | None = None,
    use_run_index: bool = True,
) -> Path:
    """One prediction per input row, in input order: generated text, or the label for classification.

    Inputs, formats (``auto``, ``jsonl``, ``text``, ``labels``) and rules: see
    :func:`tunesmith.pipelines.lm.predict` (generation and label-word runs); heads and feature extraction
    have their own, with the same formats. ``index``/``k``: retrieve into each prompt; without them a run
    whose config names ``rag.index`` retrieves from it (``use_run_index=False`` turns that off).
    """
    return registry.predict(run_dir, data, out, fmt, index=index, k=k, use_run_index=use_run_index)


__all__ = ["LoopHooks", "evaluate", "predict", "read_run_config", "train", "write_predictions"]
