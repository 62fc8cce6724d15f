"""Predictions for ``tunesmith plan``: peak memory per method, speed on this machine, time for the data.

    shape = data_shape(cfg)                       # the configured data: micro-batch shape, tokens to train
    cal = calibrate(seconds=10)                   # real forward+backward steps of the default model, timed
    rows = [estimate(c, m, shape, cal, budget_mb) for c in candidates for m in METHODS]

Memory: :func:`tunesmith.models.memory.plan_memory` (the planner the loop prints and ``memory_budget_mb``
fits with) over each candidate on the meta device with the method applied, plus the runtime this process
already holds before any model (Python, torch, transformers: measured). Speed: a scaling estimate, not a
measurement per model: the calibration's FLOPs/s (6 N per token for a full forward+backward of the default
model's N parameters) divided by the candidate's FLOPs per token: ~6 N full (forward 2 N, backward 4 N),
~4 N with a frozen base (LoRA, QLoRA: no weight gradients), ~2 N for a head on a frozen base (forward only).
Attention's FLOPs, QLoRA's dequantization and memory-bound steps are not modelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from tunesmith.config import LoraMethod, RunConfig
from tunesmith.data.prepare import prepare_data
from tunesmith.methods import prepare_model
from tunesmith.models.fused import fuse_gated_mlps
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.models.memory import MB, MemoryPlan, plan_memory
from tunesmith.plan.candidates import Candidate, meta_model
from tunesmith.train.loop import total_optimizer_steps
from tunesmith.train.precision import pick_mixed_precision

FLOPS_PER_PARAM = {"full": 6, "lora": 4, "qlora": 4, "head": 2}
"""FLOPs per token per parameter: forward 2, backward 2 for activation gradients + 2 for weight gradients."""
QLORA_BITS = 4.5
"""Bits per quantized weight: 4 + block scales (fp32 per 64 weights = 0.5 bits; double quantization ~0.13)."""


@dataclass
class DataShape:
    """What the configured run trains on, as the planner needs it."""

    rows: int  # rows per micro-batch (train.batch_size)
    width: int  # the longest example, in tokens: the worst-case padded width
    targets: int  # positions inside the loss per micro-batch (worst case; a head: one per row)
    tokens: int  # tokens the whole run trains on (epochs or max_steps)
    steps: int
    precision: str  # accelerate's name: bf16 or no
    num_labels: int | None  # a classification head's labels, else None
    grad_accum: int = 1  # micro-batches per optimizer step (train.grad_accum)


@dataclass
class Calibration:
    """The machine's measured speed: real training steps of the default model."""

    tokens_per_s: float
    params: int
    seconds: float
    steps: int
    width: int
    runtime_mb: float  # this process's RSS before any model: what every run pays on top of the plan

    @property
    def flops_per_s(self) -> float:
        return self.tokens_per_s * FLOPS_PER_PARAM["full"] * self.params


@dataclass
class Estimate:
    """One row of the plan table."""

    model: str
    params: int
    method: str
    peak_mb: float
    fits: bool
    tokens_per_s: float
    seconds: float


def data_shape(cfg: RunConfig) -> DataShape:
    """The configured data's micro-batch shape and token total, with the config's own tokenizer (other
    candidates' tokenizers are not downloaded: their token counts are taken to be the same)."""
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    data = prepare_data(cfg.data, tokenizer, cfg.seed, head=cfg.model.head)
    lengths = [len(ids) for ids in data.train.input_ids]
    steps = total_optimizer_steps(len(lengths), cfg.train)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    if cfg.train.max_steps is not None:
        tokens = round(steps * per_step * sum(lengths) / max(1, len(lengths)))
    else:
        tokens = round(sum(lengths) * cfg.train.epochs)
    rows, width = cfg.train.batch_size, max(lengths, default=1)
    head = cfg.model.head == "classification"
    return DataShape(
        rows=rows,
        width=width,
        targets=rows if head else rows * width,
        tokens=tokens,
        steps=steps,
        precision=pick_mixed_precision(cfg.train.precision),
        num_labels=len(data.label_names or []) or 2 if head else None,
        grad_accum=cfg.train.grad_accum,
    )


def _plan(model: Any, shape: DataShape) -> MemoryPlan:
    fuse_gated_mlps(model)  # as the training loop does before it plans
    tokens = shape.rows * shape.width
    return plan_memory(
        model, tokens, shape.targets, shape.precision, width=shape.width, grad_accum=shape.grad_accum
    )


def _lora(cfg: RunConfig | None) -> LoraMethod:
    """The config's LoRA settings (rank, targets; a qlora method's too), else LoRA's defaults."""
    method = cfg.method if cfg is not None else None
    if not isinstance(method, LoraMethod):
        return LoraMethod()
    fields = {k: v for k, v in method.model_dump().items() if k in LoraMethod.model_fields}
    return LoraMethod(**{**fields, "name": "lora"})


def memory_full(candidate: Candidate, shape: DataShape, cfg: RunConfig | None) -> MemoryPlan:
    return _plan(meta_model(candidate, shape.num_labels), shape)


def memory_lora(candidate: Candidate, shape: DataShape, cfg: RunConfig | None) -> MemoryPlan:
    head = "classification" if shape.num_labels is not None else "lm"
    return _plan(prepare_model(meta_model(candidate, shape.num_labels), _lora(cfg), head), shape)


def memory_qlora(candidate: Candidate, shape: DataShape, cfg: RunConfig | None) -> MemoryPlan:
    """LoRA's plan with the base's linear weights at :data:`QLORA_BITS` (embeddings and norms stay fp32)."""
    plan = memory_lora(candidate, shape, cfg)
    base = meta_model(candidate, shape.num_labels)
    linear = sum(
        m.weight.numel()
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"
    )
    other = sum(p.numel() for p in base.parameters()) - linear
    plan.weights_mb = (linear * QLORA_BITS / 8 + other * 4) / MB + plan.grads_mb  # + the fp32 adapters
    return plan


def memory_head(candidate: Candidate, shape: DataShape, cfg: RunConfig | None) -> MemoryPlan:
    """A new classification head on a frozen base: autograd saves nothing inside the base, so the
    activations are one layer's working set at a time (the planner's per-layer count), not every layer's."""
    model = meta_model(candidate, shape.num_labels or 2)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("score")
    head_shape = DataShape(**{**shape.__dict__, "targets": shape.rows})
    plan = _plan(model, head_shape)
    plan.activations_mb /= max(1, candidate.config.num_hidden_layers)
    return plan


METHODS: dict[str, Callable[[Candidate, DataShape, RunConfig | None], MemoryPlan]] = {
    "full": memory_full,
    "lora": memory_lora,
    "qlora": memory_qlora,
    "head": memory_head,
}
"""Planned methods by name; ``head`` = a classification head alone on a frozen base (method freeze,
train_last_n_blocks: 0)."""


def estimate(
    candidate: Candidate,
    method: str,
    shape: DataShape,
    cfg: RunConfig | None,
    cal: Calibration,
    budget_mb: float,
    params: int,
) -> Estimate:
    """One (model, method) row: peak memory, whether it fits ``budget_mb``, tokens/s and seconds."""
    plan = METHODS[method](candidate, shape, cfg)
    peak = cal.runtime_mb + plan.total_mb
    tokens_per_s = cal.flops_per_s / (FLOPS_PER_PARAM[method] * params)
    return Estimate(
        candidate.label, params, method, peak, peak <= budget_mb, tokens_per_s, shape.tokens / tokens_per_s
    )


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def calibrate(seconds: float = 10.0, width: int = 128, precision: str = "no") -> Calibration:
    """Time real full forward+backward passes of the default model for ``seconds`` (after one warm-up
    step): tokens per second on this machine, now. A loaded machine gives a lower number; memory does not
    depend on load, speed does."""
    runtime_mb = current_rss_mb()
    model = load_causal_lm("default")
    model.train()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(3, model.config.vocab_size, (1, width), generator=torch.Generator().manual_seed(0))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and kernel selection
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - start
    return Calibration(steps * width / elapsed, params, elapsed, steps, width, runtime_mb)


def budget_mb(cfg: RunConfig) -> tuple[float, str]:
    """What a run may use: ``train.memory_budget_mb``, else the GPU's memory, else this machine's RAM."""
    if cfg.train.memory_budget_mb is not None:
        return cfg.train.memory_budget_mb, "train.memory_budget_mb"
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / MB, "GPU memory"
    return psutil.virtual_memory().total / MB, "RAM"
