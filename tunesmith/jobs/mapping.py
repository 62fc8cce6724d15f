"""A fine-tuning job request (OpenAI's shape) -> tunesmith config overrides. The table is docs/jobs.md.

method.supervised.hyperparameters   ->  tunesmith
  n_epochs                  (auto: 3)   train.epochs
  batch_size                (auto: 8)   train.batch_size
  learning_rate_multiplier  (auto: 1)   train.lr = 2e-4 (tunesmith's LoRA lr) x multiplier
model                                   model.name (a served base: `default` or a model directory)
training_file / validation_file         data.train / data.validation (the uploaded bytes)
seed                        (none: 0)   seed
metadata["tunesmith_max_steps"]         train.max_steps (a cap; the SDK has no such field)
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError

BASE_LR = 2e-4
"""tunesmith's LoRA learning rate, which ``learning_rate_multiplier`` scales."""
AUTO = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
"""What ``"auto"`` (or an absent value) picks: OpenAI's documented default of 3 epochs for small files."""
SAVE_EVERY = 10
"""Checkpoint every N steps: what a crash, a pause or a cancel loses at most."""


def method_of(request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method type and its hyperparameters (legacy top-level ``hyperparameters`` mean supervised)."""
    method = request.get("method") or {"type": "supervised"}
    kind = method.get("type", "supervised")
    section = method.get(kind) or {}
    hyper = dict(section.get("hyperparameters") or request.get("hyperparameters") or {})
    return kind, hyper


def resolved_hyperparameters(request: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters with every ``auto`` replaced by what it picks (shown on the job object)."""
    _, hyper = method_of(request)
    out = {}
    for key, auto in AUTO.items():
        value = hyper.get(key, "auto")
        out[key] = auto if value in (None, "auto") else value
    return out


def to_overrides(
    request: dict[str, Any], train_path: str, valid_path: str | None, job_id: str, runs: str
) -> list[str]:
    """Config overrides for :func:`tunesmith.config.load_config` that run this job.

    Raises:
        ConfigError: a method this version does not map (the job fails with this message).
    """
    kind, _ = method_of(request)
    if kind != "supervised":
        raise ConfigError(
            f"method `{kind}` is not mapped onto tunesmith runs by this server yet; use `supervised`, or run "
            f"recipes/{'dpo' if kind == 'dpo' else 'grpo'}.yaml with `tunesmith train`"
        )
    hp = resolved_hyperparameters(request)
    overrides = [
        f"output_dir={runs}",
        f"name={job_id}",
        f"model.name={request.get('base_source') or request['model']}",
        f"data.train={train_path}",
        f"seed={int(request.get('seed') or 0)}",
        f"train.epochs={float(hp['n_epochs'])}",
        f"train.batch_size={int(hp['batch_size'])}",
        f"train.lr={BASE_LR * float(hp['learning_rate_multiplier'])}",
        f"train.save_every={int((request.get('metadata') or {}).get('tunesmith_save_every') or SAVE_EVERY)}",
        # Baselines and probes judge a run for a person; an API job reports losses, as OpenAI's does.
        "eval.compare_base=false",
        "eval.probes=false",
        "eval.icl_shots=[]",
    ]
    if valid_path:
        overrides.append(f"data.validation={valid_path}")
    cap = (request.get("metadata") or {}).get("tunesmith_max_steps")
    if cap:
        overrides.append(f"train.max_steps={int(cap)}")
    return overrides
