"""A fine-tuning job request (OpenAI's shape) -> tunesmith config overrides. The table is docs/jobs.md.

Every method                            ->  tunesmith
  model                                     model.name (a served base: `default` or a model directory)
  training_file / validation_file           data.train / data.validation (the uploaded bytes)
  seed                        (none: 0)     seed
  hyperparameters.n_epochs                  train.epochs
  hyperparameters.batch_size                train.batch_size
  hyperparameters.learning_rate_multiplier  train.lr = the method's base lr x multiplier
  metadata["tunesmith_max_steps"]           train.max_steps (a cap; the SDK has no such field)
method.dpo.hyperparameters.beta             objective.beta (objective.name=dpo, loss sigmoid)
method.reinforcement.grader                 objective.grader (objective.name=grpo; the same vocabulary)
  hyperparameters.compute_multiplier        objective.num_generations = 4 x multiplier (at least 2)
  hyperparameters.eval_interval             train.eval_every
  hyperparameters.eval_samples              eval.max_examples
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tunesmith.errors import ConfigError
from tunesmith.evaluate.graders import build_grader
from tunesmith.objective import Grader

SAVE_EVERY = 10
"""Checkpoint every N steps: what a crash or a cancel loses at most (a pause loses nothing)."""
GENERATIONS = 4
"""GRPO completions per prompt at ``compute_multiplier`` 1 (recipes/grpo.yaml's group)."""
OPENAI_ONLY_GRADER_KEYS = {"python": ("image_tag",), "score_model": ("input", "sampling_params")}
"""Keys of OpenAI's graders tunesmith has no use for: a python grader runs in a local process (no image);
a score model here is a tunesmith reward model, which reads the row's prompt itself (no judge prompt)."""


class RequestError(ConfigError):
    """A job request this server refuses (HTTP 400), naming the offending ``param``."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class MethodMap:
    """How one ``method.type`` maps: what ``auto`` picks, the base lr, the data shape, extra overrides."""

    auto: dict[str, Any]
    base_lr: float
    shape: str
    """What the training file holds: ``sft`` (chat rows), ``preference`` (pairs) or ``prompt``."""
    extra: Callable[[dict[str, Any], dict[str, Any]], list[str]]
    """(resolved hyperparameters, method section) -> overrides beyond epochs, batch size and lr."""


def _dpo(hp: dict[str, Any], _: dict[str, Any]) -> list[str]:
    return ["objective.name=dpo", "objective.loss=sigmoid", f"objective.beta={float(hp['beta'])}"]


def _reinforcement(hp: dict[str, Any], section: dict[str, Any]) -> list[str]:
    generations = max(2, round(GENERATIONS * float(hp["compute_multiplier"])))
    overrides = [
        "objective.name=grpo",
        f"objective.grader={json.dumps(tunesmith_grader(section.get('grader')))}",
        f"objective.num_generations={generations}",
    ]
    if hp["eval_interval"] is not None:
        overrides.append(f"train.eval_every={int(hp['eval_interval'])}")
    if hp["eval_samples"] is not None:
        overrides.append(f"eval.max_examples={int(hp['eval_samples'])}")
    return overrides


METHODS: dict[str, MethodMap] = {
    # OpenAI's documented default of 3 epochs for small files; 2e-4 is tunesmith's LoRA learning rate.
    "supervised": MethodMap(
        {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}, 2e-4, "sft", lambda hp, s: []
    ),
    # recipes/dpo.yaml: one epoch, 4 pairs a step, ~4x less lr than SFT, beta 0.1 (DPO paper's value).
    "dpo": MethodMap(
        {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0, "beta": 0.1},
        5e-5,
        "preference",
        _dpo,
    ),
    # recipes/grpo.yaml: 4 prompts x 4 completions a step at lr 1e-4; evaluation at the end only.
    "reinforcement": MethodMap(
        {
            "n_epochs": 1,
            "batch_size": 4,
            "learning_rate_multiplier": 1.0,
            "compute_multiplier": 1.0,
            "eval_interval": None,
            "eval_samples": None,
        },
        1e-4,
        "prompt",
        _reinforcement,
    ),
}
BASE_LR = METHODS["supervised"].base_lr
"""tunesmith's LoRA learning rate, which a supervised job's ``learning_rate_multiplier`` scales."""


def method_of(request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method type and its hyperparameters (legacy top-level ``hyperparameters`` mean supervised)."""
    method = request.get("method") or {"type": "supervised"}
    kind = method.get("type", "supervised")
    section = method.get(kind) or {}
    hyper = dict(section.get("hyperparameters") or request.get("hyperparameters") or {})
    return kind, hyper


def method_section(request: dict[str, Any]) -> dict[str, Any]:
    """``method.<type>``: the hyperparameters and, for reinforcement, the grader."""
    kind, _ = method_of(request)
    return dict((request.get("method") or {}).get(kind) or {})


def resolved_hyperparameters(request: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters with every ``auto`` replaced by what it picks (shown on the job object)."""
    kind, hyper = method_of(request)
    out = {}
    for key, auto in METHODS[kind].auto.items():
        value = hyper.get(key, "auto")
        out[key] = auto if value in (None, "auto") else value
    return out


def tunesmith_grader(spec: Any) -> dict[str, Any]:
    """An OpenAI grader spec as tunesmith's (keys tunesmith has no use for dropped, nested ones too)."""
    if not isinstance(spec, dict):
        raise RequestError("method.reinforcement.grader is required: an object with a `type`", "grader")
    out = {k: v for k, v in spec.items() if k not in OPENAI_ONLY_GRADER_KEYS.get(spec.get("type"), ())}
    if spec.get("type") == "multi" and isinstance(spec.get("graders"), dict):
        out["graders"] = {name: tunesmith_grader(g) for name, g in spec["graders"].items()}
    return out


def _check_score_model(path: str) -> Any:
    # At request time only the reward model's run directory is checked; the worker loads it.
    if not (Path(path) / "config.yaml").exists():
        raise ConfigError(
            f"score_model `model` must be a tunesmith reward-model run directory on the server "
            f"(`objective: {{name: reward}}`); {path!r} is not a run directory"
        )
    return lambda completions, items: [0.0] * len(completions)


_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "model": (str, "a string"),
    "training_file": (str, "a file id"),
    "validation_file": (str, "a file id"),
    "suffix": (str, "a string"),
    "seed": (int, "an integer"),
    "metadata": (dict, "an object of strings"),
    "method": (dict, "an object"),
    "hyperparameters": (dict, "an object"),
}


def _check_type(value: Any, kind: type, what: str, param: str) -> None:
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise RequestError(f"{param} must be {what}, got {type(value).__name__}", param)


def check_shape(request: Any) -> None:
    """Refuse a request whose fields have the wrong JSON types before anything reads them.

    Raises:
        RequestError: Not an object, or a field (``method.<type>.hyperparameters`` too) of the wrong type.
    """
    if not isinstance(request, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(request).__name__}", "body")
    for key, (kind, what) in _FIELD_TYPES.items():
        _check_type(request.get(key), kind, what, key)
    if any(not isinstance(v, str) for v in (request.get("metadata") or {}).values()):
        raise RequestError("metadata must be an object of strings", "metadata")
    method = request.get("method") or {}
    _check_type(method.get("type"), str, "a string", "method.type")
    kind = method.get("type", "supervised")
    _check_type(method.get(kind), dict, "an object", f"method.{kind}")
    section = method.get(kind) or {}
    _check_type(section.get("hyperparameters"), dict, "an object", f"method.{kind}.hyperparameters")


def check_request(request: dict[str, Any]) -> None:
    """Refuse what would fail only in the worker: unknown method, bad hyperparameters, a bad grader.

    Raises:
        RequestError: with the request field to blame (``method``, ``hyperparameters``, ``grader``).
    """
    kind, hyper = method_of(request)
    if kind not in METHODS:
        raise RequestError(f"method.type must be one of {', '.join(METHODS)}", "method")
    for key, value in hyper.items():
        if key not in METHODS[kind].auto and key != "reasoning_effort":
            known = ", ".join(METHODS[kind].auto)
            raise RequestError(f"method.{kind}.hyperparameters.{key} is unknown (known: {known})", key)
        if value not in (None, "auto") and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise RequestError(f"method.{kind}.hyperparameters.{key} must be `auto` or > 0", key)
    if kind != "reinforcement":
        return
    spec = tunesmith_grader(method_section(request).get("grader"))
    try:
        grader = TypeAdapter(Grader).validate_python(spec)
        build_grader(grader, load_score_model=_check_score_model)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        where = f"{loc}: " if loc else ""  # a wrong `type` is reported at the grader itself
        raise RequestError(f"method.reinforcement.grader: {where}{first['msg']}", "grader") from None
    except ConfigError as err:
        raise RequestError(f"method.reinforcement.grader: {err}", "grader") from None


def to_overrides(
    request: dict[str, Any], train_path: str, valid_path: str | None, job_id: str, runs: str
) -> list[str]:
    """Config overrides for :func:`tunesmith.config.load_config` that run this job."""
    kind, _ = method_of(request)
    mapped = METHODS[kind]
    hp = resolved_hyperparameters(request)
    metadata = request.get("metadata") or {}
    overrides = [
        f"output_dir={runs}",
        f"name={job_id}",
        f"model.name={request.get('base_source') or request['model']}",
        f"data.train={train_path}",
        f"seed={int(request.get('seed') or 0)}",
        f"train.epochs={float(hp['n_epochs'])}",
        f"train.batch_size={int(hp['batch_size'])}",
        f"train.lr={mapped.base_lr * float(hp['learning_rate_multiplier'])}",
        f"train.save_every={int(metadata.get('tunesmith_save_every') or SAVE_EVERY)}",
        # Baselines and probes judge a run for a person; an API job reports losses, as OpenAI's does.
        "eval.compare_base=false",
        "eval.probes=false",
        "eval.safety_probe=false",
        "eval.icl_shots=[]",
        *mapped.extra(hp, method_section(request)),
    ]
    if valid_path:
        overrides.append(f"data.validation={valid_path}")
    if metadata.get("tunesmith_max_steps"):
        overrides.append(f"train.max_steps={int(metadata['tunesmith_max_steps'])}")
    return overrides
