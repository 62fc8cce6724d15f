"""The search space of a sweep: config paths mapped to distributions, read from a YAML file.

    train.lr: {log_uniform: [1.0e-5, 3.0e-3]}   # log-uniform float in [low, high]
    train.epochs: {uniform: [1, 3]}             # uniform float in [low, high]
    train.warmup_steps: {int: [0, 20]}          # integer in [low, high], both included
    method.r: {choice: [8, 16, 32]}             # one of the listed values (numbers, strings, booleans)

Every key is a path in the run config (what ``--set`` takes) and is checked against the schema for the base
config before any trial runs: an unknown key, or a range whose ends the schema rejects, is an error that names
the key and the space file. The grid sampler needs ``choice`` or ``int`` parameters (a continuous range has
no grid).
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from tunesmith.config import config_from_dict, format_errors, read_yaml_file, set_path
from tunesmith.errors import ConfigError
from tunesmith.schema import Strict

Scalar = bool | int | float | str | None


class Distribution(Strict):
    """One parameter's distribution: exactly one of the keys below."""

    log_uniform: tuple[float, float] | None = None
    """[low, high] with 0 < low < high, sampled uniformly in log space (learning rates)."""
    uniform: tuple[float, float] | None = None
    """[low, high], sampled uniformly."""
    integer: tuple[int, int] | None = Field(None, alias="int")
    """[low, high], integers with both ends included."""
    choice: list[Scalar] | None = Field(None, min_length=1)
    """Values to choose from (numbers, strings, booleans, null)."""

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("log_uniform", "uniform", "integer", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of log_uniform, uniform, int, choice")
        bounds = self.log_uniform or self.uniform or self.integer
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be below high, got {list(bounds)}")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError("log_uniform needs low > 0")
        if self.choice is not None and len({repr(c) for c in self.choice}) != len(self.choice):
            raise ValueError(f"choice values repeat: {self.choice}")
        return self


@dataclass(frozen=True)
class Param:
    """One swept config path and its distribution."""

    key: str
    dist: Distribution

    @property
    def kind(self) -> str:
        """The space file's name of the distribution: log_uniform, uniform, int or choice."""
        field = next(
            k for k in ("log_uniform", "uniform", "integer", "choice") if getattr(self.dist, k) is not None
        )
        return "int" if field == "integer" else field

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this parameter (an ``optuna.Trial``)."""
        d = self.dist
        if d.log_uniform is not None:
            return trial.suggest_float(self.key, *d.log_uniform, log=True)
        if d.uniform is not None:
            return trial.suggest_float(self.key, *d.uniform)
        if d.integer is not None:
            return trial.suggest_int(self.key, *d.integer)
        return trial.suggest_categorical(self.key, d.choice)

    def grid(self, space_file: str) -> list[Scalar]:
        """Every value of a discrete parameter (the grid sampler's axis)."""
        if self.dist.choice is not None:
            return list(self.dist.choice)
        if self.dist.integer is not None:
            return list(range(self.dist.integer[0], self.dist.integer[1] + 1))
        raise ConfigError(
            f"{space_file}: {self.key}: the grid sampler needs choice or int values, not a {self.kind} "
            "range; list the grid points with choice: [...] or use --sampler random / tpe"
        )

    def ends(self) -> list[Scalar]:
        """Values the schema must accept: both ends of a range, or every choice."""
        bounds = self.dist.log_uniform or self.dist.uniform or self.dist.integer
        return list(bounds) if bounds is not None else list(self.dist.choice or [])


def grid_size(params: list[Param], space_file: str) -> int:
    return math.prod(len(p.grid(space_file)) for p in params)


def read_space(path: str | Path) -> list[Param]:
    """The parameters of a space file, in file order (not yet checked against a config: see
    :func:`check_space`)."""
    raw = read_yaml_file(path, "space")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a space file maps config paths to distributions, e.g. train.lr: {{...}}")
    params = []
    for key, spec in raw.items():
        try:
            params.append(Param(str(key), Distribution.model_validate(spec)))
        except ValidationError as err:
            raise ConfigError(format_errors(err, f"{path}, parameter {key}")) from None
    return params


def _lookup(tree: dict[str, Any], key: str) -> tuple[bool, dict[str, Any], str]:
    """(found, the deepest section reached, the first missing part) for a dotted ``key``."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, node if isinstance(node, dict) else {}, part
        parent, node = node, node[part]
    return True, parent, ""


def check_space(params: list[Param], base: dict[str, Any], space_file: str) -> None:
    """Fail early, naming the key and ``space_file``, on a path the base config does not have or on a
    range end / choice the schema rejects (a rank of 0, an unknown scheduler)."""
    resolved = config_from_dict(copy.deepcopy(base), "the base config").model_dump(mode="json")
    for param in params:
        found, section, missing = _lookup(resolved, param.key)
        if not found:
            near = difflib.get_close_matches(missing, list(section), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"{space_file}: {param.key}: not a key of the run config ({missing!r} unknown{hint}); "
                "space keys are config paths as --set takes them, see docs/config.md"
            )
        for value in param.ends():
            trial_raw = set_path(copy.deepcopy(base), param.key, value)
            try:
                config_from_dict(trial_raw, f"{space_file}, {param.key}={value!r}")
            except ConfigError as err:
                raise ConfigError(
                    f"{space_file}: {param.key}: the value {value!r} is not valid:\n{err}"
                ) from None
