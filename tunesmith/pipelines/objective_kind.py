"""What the preference and RL kinds (``dpo``, ``reward``, ``grpo``) share, written once: their data through
:func:`~tunesmith.data.preference.prepare_preferences` in the kind's shape, the one loop with the kind's
loss, the result saved like an lm run's, the loop's summary, and re-evaluation of a finished run.

A kind says its data ``shape`` and ``task``, and implements ``baselines``, ``fit`` (through
:meth:`ObjectivePipeline.train_with`) and ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data.preference import AnySplit, PreferenceData, prepare_preferences
from tunesmith.errors import ConfigError, DataError
from tunesmith.infer.batching import TokenData
from tunesmith.methods import load_trained, optimizer_for
from tunesmith.pipelines.base import Fit, Pipeline, Run, loop_summary, print_data_report
from tunesmith.runs import Summary, save_trained
from tunesmith.train.loop import ValMetrics, train_loop

EVAL_SPLITS = ("validation", "test")


def eval_splits(data: PreferenceData) -> dict[str, AnySplit]:
    """The non-empty evaluation splits of ``data``, by name."""
    return {n: s for n in EVAL_SPLITS if (s := getattr(data, n)) is not None and len(s)}


def check_trains_the_lm(cfg: RunConfig) -> None:
    """The kinds that train the LM itself need its vocabulary head and a training method."""
    if cfg.model.head != "lm" or cfg.method.name == "feature_extraction":
        raise ConfigError(
            f"objective {cfg.objective.name} trains the LM itself: use model.head: lm and a training method"
        )


def prepared_for_evaluation(
    run_dir: str | Path, data: str | Path | None, shape: str
) -> tuple[Any, Any, RunConfig, PreferenceData]:
    """A finished run's model, tokenizer and config, and its evaluation data: its own splits, or ``data``
    as the validation split."""
    model, tokenizer, cfg = load_trained(run_dir)
    data_cfg = cfg.data
    if data is not None:
        data_cfg = data_cfg.model_copy(update={"validation": str(data), "test": None})
    return model, tokenizer, cfg, prepare_preferences(data_cfg, tokenizer, cfg.seed, shape)


class ObjectivePipeline(Pipeline):
    """A preference or RL kind: see the module docstring."""

    task = "preference"
    labels: list[str] | None = None
    """Written to data_report.json as ``label_names`` (the reward head's one output)."""

    def shape(self, cfg: RunConfig) -> str:
        """The data shape this run reads: ``preference``, ``unpaired`` or ``prompt``."""
        raise NotImplementedError

    def check(self, cfg: RunConfig) -> None:
        if cfg.train.packing:
            raise ConfigError(
                f"objective {cfg.objective.name} scores whole answers: train.packing does not apply "
                "(set it false)"
            )

    def prepare(self, run: Run) -> PreferenceData:
        data = prepare_preferences(run.cfg.data, run.tokenizer, run.cfg.seed, self.shape(run.cfg))
        if self.labels:
            data.report["label_names"] = self.labels
        run.dir.write_data_report(data.report)
        print_data_report(data.report)
        if not len(data.train):
            raise DataError(f"{run.cfg.data.train}: no training examples left (see data_report.json)")
        run.task = self.task
        return data

    def train_with(
        self,
        run: Run,
        model: Any,
        train: TokenData,
        val: TokenData | None,
        loss_fn: Callable[..., Any],
        val_metrics: ValMetrics | None = None,
        pad_id: int = 0,
    ) -> Fit:
        """The one loop over ``train`` with this kind's loss (and validation pass, if any)."""
        cfg = run.cfg
        result = train_loop(
            model,
            train,
            val,
            cfg.train,
            seed=cfg.seed,
            run_dir=run.dir.path,
            pad_id=pad_id,
            resume=run.resume,
            loss_fn=loss_fn,
            val_metrics=val_metrics if val is not None else None,
            make_optimizer=optimizer_for(cfg.method),
            hooks=run.hooks,
        )
        run.timings["train_s"] = result.train_seconds
        return Fit(model, result, result.interrupted)

    def save(self, run: Run, fit: Fit) -> None:
        save_trained(fit.model, run.tokenizer, run.dir.path)

    def summarise(self, run: Run, fit: Fit, data: PreferenceData, evals: dict[str, Any]) -> Summary:
        assert fit.result is not None
        return loop_summary(run, fit.model, run.task, fit.result, evals, data)  # type: ignore[arg-type]
