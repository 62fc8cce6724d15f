"""The training loop: one function you can read top to bottom.

    result = train_loop(model, train_data, val_data, cfg.train, seed=0, run_dir=Path("runs/x"), pad_id=2)

Per optimizer step: ``grad_accum`` micro-batches, each loss a token *sum* divided by the target tokens of the
whole step (so accumulation equals one big batch), clip, AdamW, scheduler. Every ``eval_every`` steps:
validation loss (or a caller's ``val_metrics``: loss plus scores), early-stopping bookkeeping on
``train.best_metric``, best weights snapshot. Every ``save_every`` steps and on Ctrl-C:
an atomic checkpoint that ``resume=True`` continues from exactly (weights, optimizer, scheduler, RNG, data
position). A ``STOP`` file in the run directory (``RunDir.stop_request``, written by another process: the
jobs worker's pause) ends the run the same way, but only between steps, never inside one. With
``train.ema_decay`` the validation passes, the best snapshot and the final weights are an exponential moving
average of the trained ones. Under torchrun (``tunesmith train --nproc N``) every process trains its
shard of each global micro-batch and only rank 0 writes (:mod:`tunesmith.train.distributed`). ``hooks``
(:mod:`tunesmith.train.hooks`) see every logged row and every validation pass, and may stop the run there
(a sweep's pruner: ``result.pruned``). Device and autocast come from accelerate, so the same code runs on
CPU and CUDA.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_scheduler

from tunesmith.config import TrainConfig
from tunesmith.errors import RunError
from tunesmith.faults import fault_point
from tunesmith.infer.batching import TokenData, count_targets, count_tokens
from tunesmith.infer.loss import LossFn, causal_lm_loss, evaluate_loss
from tunesmith.models.fused import fuse_gated_mlps
from tunesmith.models.memory import MemoryPlan, fit_micro_batch, plan_memory
from tunesmith.runs import RunDir
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.batching import batches_per_epoch, iter_batches
from tunesmith.train.distributed import (
    World,
    all_sum,
    barrier,
    broadcast_parameters,
    from_main,
    shard_copy,
    start_world,
    sync_gradients,
)
from tunesmith.train.ema import WeightAverage
from tunesmith.train.hooks import LoopHooks
from tunesmith.train.monitor import MetricsLog, fix_mmap_threshold, peak_rss_mb
from tunesmith.train.precision import pick_mixed_precision

ValMetrics = Callable[[Any, int], dict[str, float]]
"""(model, batch_size) -> {"val_loss": ..., "val_<score>": ...}: one validation pass, loss and scores."""


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    interrupted: bool = False  # Ctrl-C, or pruned: the run stopped before its end, nothing to evaluate
    pruned: bool = False  # a validation hook stopped it (a sweep's pruner)
    stopped_early: bool = False
    restored_best: bool = False
    best_step: int | None = None
    best_val_loss: float | None = None  # validation loss at best_step
    best_score: float | None = None  # train.best_metric at best_step (for val_loss: the loss itself)
    final_val_loss: float | None = None
    train_tokens: int = 0
    train_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def total_optimizer_steps(n_examples: int, cfg: TrainConfig, processes: int = 1) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = batches_per_epoch(n_examples, cfg.batch_size * processes)
    return max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))


def _micro_batches(
    data: TokenData, cfg: TrainConfig, seed: int, pad_id: int, state: ckpt.TrainState, world: World
):
    """Endless stream of (epoch, batch_index, batch), continuing from the state's data position; the
    index counts global micro-batches (``batch_size`` x processes), the batch is this rank's share."""
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        for offset, batch in enumerate(
            iter_batches(
                data,
                cfg.batch_size * world.size,
                pad_id,
                seed,
                epoch,
                start,
                cfg.group_by_length,
                cfg.packing,
                world,
            )
        ):
            yield epoch, start + offset, batch
        epoch, start = epoch + 1, 0


def train_loop(
    model: Any,
    train_data: TokenData,
    val_data: TokenData | None,
    cfg: TrainConfig,
    seed: int,
    run_dir: Path,
    pad_id: int,
    resume: bool = False,
    loss_fn: LossFn = causal_lm_loss,
    on_step: Callable[[int, float], None] | None = None,
    val_metrics: ValMetrics | None = None,
    make_optimizer: Callable[[Any, TrainConfig], torch.optim.Optimizer] | None = None,
    hooks: LoopHooks | None = None,
) -> TrainResult:
    """Train ``model`` in place; see the module docstring. ``on_step(step, loss)`` runs after each step.

    ``loss_fn(model, batch) -> (loss_sum, units)`` is any objective over ``train_data``'s batches; the loop
    divides by the step's units (:func:`~tunesmith.infer.batching.count_targets`). With a ``pop_stats()``
    method its per-step measurements go into metrics.jsonl beside the loss.

    ``val_metrics(model, batch_size)`` replaces the validation-loss pass when given: it returns
    ``{"val_loss": ..., "val_<score>": ...}`` from one pass (classification heads: macro-F1, accuracy), so
    ``train.best_metric`` can pick weights by a score rather than the loss. ``make_optimizer(model, cfg)``
    replaces plain AdamW over the trainable parameters (a method's own parameter groups, e.g. LoRA+).
    ``hooks`` observe the metrics rows and validation passes (:mod:`tunesmith.train.hooks`).
    """
    if cfg.best_metric != "val_loss" and val_metrics is None:
        raise RunError(
            f"train.best_metric: {cfg.best_metric} needs a classification head's validation scores"
        )
    fix_mmap_threshold(cfg.memory_mode)  # RSS that tracks live tensors, or speed (see there)
    ckpt_root = RunDir(run_dir).checkpoints
    found = ckpt.latest_checkpoint(ckpt_root) if resume else None  # verified; a torn one is skipped
    world = start_world()
    if cfg.sharding == "fsdp" and world.size > 1:
        world = dataclasses.replace(world, sharded=True)
    # Rank 0's choice: `auto` times a matmul, and ranks must not train in different precisions.
    precision = from_main(run_precision(cfg.precision, found), world)
    accelerator = make_accelerator(precision)
    if not world.sharded:  # sharded: the whole model stays in host memory, only its shards go to the device
        model = model.to(accelerator.device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    fuse_gated_mlps(model)  # same numbers, one intermediate-size tensor less kept per token and layer
    cfg = plan_and_fit(model, train_data, cfg, precision, world.main)
    broadcast_parameters([p for p in model.parameters() if p.requires_grad], world, accelerator.device)
    # What the steps update: the model itself, or its FSDP-sharded copy (gathered back into it at the end).
    trained = shard_copy(model) if world.sharded else model
    params = [p for p in trained.parameters() if p.requires_grad]
    if make_optimizer is not None:
        optimizer = make_optimizer(trained, cfg)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = total_optimizer_steps(len(train_data.input_ids), cfg, world.size)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=total_steps,
    )
    stop_request = RunDir(run_dir).stop_request
    best_dir = ckpt_root / "best"
    ema = WeightAverage(trained, cfg.ema_decay) if cfg.ema_decay is not None else None
    averaged = ema.shadow if ema is not None else None  # what checkpoints save and restore of it
    state = ckpt.TrainState(precision=precision, global_micro_batch=cfg.batch_size * world.size)
    if found is not None:
        state = ckpt.load_checkpoint(found, trained, optimizer, scheduler, averaged, verified=True)
        _check_resume_shape(state, cfg, world, found)
        state.precision = precision
        if state.best_score is None and state.best_val_loss is not None and cfg.best_metric == "val_loss":
            state.best_score = -state.best_val_loss  # checkpoints written before best_score existed
        if world.main:
            print(f"tunesmith: resuming from {found} (step {state.step}/{total_steps})")
    hooks = hooks or LoopHooks()
    metrics_path = RunDir(run_dir).metrics if world.main else None  # only rank 0 writes the run directory
    log = MetricsLog(metrics_path, truncate_after=state.step if resume else 0, on_write=hooks.log)
    result = TrainResult(steps=state.step, total_steps=total_steps)
    stream = _micro_batches(train_data, cfg, seed, pad_id, state, world)
    splits = 1  # each micro-batch runs in this many row chunks; doubled on CUDA out-of-memory
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not world.main,
    )
    start_time = time.perf_counter()
    trained.train()
    try:
        while state.step < total_steps:
            step_start = time.perf_counter()
            micro = [next(stream) for _ in range(cfg.grad_accum)]
            step_loss, n_tokens, splits = _step_with_oom_retry(
                trained,
                [b for _, _, b in micro],
                loss_fn,
                accelerator,
                cfg,
                params,
                optimizer,
                scheduler,
                splits,
                world,
            )
            epoch, batch_idx, _ = micro[-1]
            state.step, state.epoch, state.batch_in_epoch = state.step + 1, epoch, batch_idx + 1
            if ema is not None:
                ema.update(state.step)
            result.train_tokens += n_tokens
            step_s = time.perf_counter() - step_start
            tok_s = n_tokens / step_s
            lr = scheduler.get_last_lr()[0]
            # A loss that measures more than its value (a preference loss's reward accuracy, GRPO's rewards
            # and generation time) hands it over once per step: popped every step, logged with the step.
            extra = loss_fn.pop_stats() if hasattr(loss_fn, "pop_stats") else {}
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                epoch_pos = round(epoch + batch_idx / max(1, _n_batches(train_data, cfg, world)), 4)
                log.write(
                    {
                        "step": state.step,
                        "epoch": epoch_pos,
                        "train_loss": step_loss,
                        "lr": lr,
                        "tokens_per_s": round(tok_s, 1),
                        "step_s": round(step_s, 3),
                        "total_steps": total_steps,
                        **extra,
                    }
                )
            fault_point("step.logged")  # test-only hooks (tunesmith.faults): the crash tests kill here
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}")
            if val_data is not None and _should_eval(state.step, total_steps, cfg):
                with ema.swapped_in() if ema is not None else nullcontext():
                    stop = _evaluate_and_track(
                        trained,
                        val_data,
                        cfg,
                        pad_id,
                        accelerator,
                        state,
                        log,
                        best_dir,
                        result,
                        loss_fn,
                        val_metrics,
                        hooks,
                        world,
                    )
                # Rank 0's hooks decide (a pruner sees its rows only); every rank must stop together.
                stop, result.pruned = from_main((stop, result.pruned), world)
                result.interrupted = result.interrupted or result.pruned
                result.stopped_early = stop and not result.pruned
            if cfg.save_every and state.step % cfg.save_every == 0:
                _save(world, ckpt_root, trained, optimizer, scheduler, state, cfg.keep_last, averaged)
                fault_point("step.saved")
            if on_step is not None:
                on_step(state.step, step_loss)
            if result.stopped_early or result.pruned:
                break
            if state.step < total_steps and from_main(stop_request.exists(), world):
                # Polled here, after the step's bookkeeping: a signal could land between the optimizer
                # step and the state update and checkpoint a step that resume would run twice.
                result.interrupted = True
                if not (cfg.save_every and state.step % cfg.save_every == 0):  # else saved just now
                    _save(world, ckpt_root, trained, optimizer, scheduler, state, cfg.keep_last, averaged)
                print(f"tunesmith: stop requested at step {state.step}; checkpoint saved, resume continues")
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep what was trained. The step in flight (if any) is dropped; the checkpoint marks the
        # last completed step, so --resume continues exactly from there.
        result.interrupted = True
        path = _save(world, ckpt_root, trained, optimizer, scheduler, state, cfg.keep_last, averaged)
        if world.main:
            print(f"\ntunesmith: interrupted at step {state.step}; saved {path}. Continue with --resume")
    finally:
        bar.close()
    result.steps = state.step
    result.train_seconds = time.perf_counter() - start_time
    result.best_step, result.best_val_loss = state.best_step, state.best_val_loss
    result.best_score = state.best_val_loss if cfg.best_metric == "val_loss" else state.best_score
    if ema is not None:
        ema.copy_to_model()  # the run's result is the average (its checkpoints keep both for --resume)
    if not result.interrupted and _keeps_best(cfg):
        barrier(world)  # rank 0 wrote the best weights; the others read them
        result.restored_best = _restore_best(trained, best_dir, state, cfg)
    if world.sharded:  # every rank gathers the full tensors; rank 0 saves and evaluates the model after
        ckpt.load_trainable_state(model, ckpt.trainable_state(trained))
    result.history = log.rows
    result.peak_memory_mb = peak_rss_mb()
    return result


def _save(world: World, *args: Any) -> Path | None:
    """``ckpt.save_checkpoint(*args)`` written by rank 0; under sharding every rank first joins in gathering
    the full tensors (collectives), then only rank 0 writes."""
    if world.main or world.sharded:
        return ckpt.save_checkpoint(*args, write=world.main)
    return None


def run_precision(precision: str, checkpoint: Path | None) -> str:
    """accelerate's precision for this run: ``auto`` is decided once, at the run's start, and a resumed run
    keeps what its checkpoint recorded. Deciding again could flip it: the CPU probe times a matmul, and on
    a busy machine (or another one) it can come out the other way, which changes every loss after resume.
    An explicit ``fp32``/``bf16`` is always obeyed."""
    saved = ckpt.saved_precision(checkpoint) if checkpoint is not None else None
    if precision == "auto" and saved is not None:
        return saved
    return pick_mixed_precision(precision)


def make_accelerator(precision: str) -> Accelerator:
    """An Accelerator for this run's precision (``bf16`` or ``no``).

    accelerate keeps one process-wide state and refuses an Accelerator whose precision differs from the
    first one's ("AcceleratorState has already been initialized"): a second run in the same process —
    sequential stages, a sweep, the Python API, a test suite — could not change precision. Its precision
    part is cleared when it differs; the distributed part (PartialState: process group, device) is kept.
    Runs in one process therefore take turns, which the loop does anyway (one run at a time).
    """
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()  # private, but the only way; a no-op cost (a dict clear)
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def _optimizer_step(
    model: Any,
    batches: list[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    accelerator: Accelerator,
    cfg: TrainConfig,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    splits: int = 1,
    world: World | None = None,
) -> tuple[float, int]:
    """One optimizer step over ``grad_accum`` micro-batches; returns (loss, tokens seen incl. prompts).

    ``splits`` > 1 runs each micro-batch in that many row chunks: the loss is a token sum over the step's
    target count, so the gradient is the same, at the cost of smaller matmuls. With several processes,
    ``batches`` are this rank's shares (None: an empty one) and the target count, the gradients, the loss and
    the token count are sums over all ranks, so every number equals the one-process step's.
    """
    world = world or World()
    mine = [b for b in batches if b is not None]
    (n_target,) = all_sum([sum(count_targets(b) for b in mine)], world)
    step_loss = 0.0
    chunks = [
        {k: v[rows] for k, v in b.items()}
        for b in mine
        for rows in torch.arange(len(b["input_ids"])).tensor_split(splits)
        if len(rows)
    ]

    # FSDP averages the ranks' gradients where the plain path sums them (the parts of one global token sum):
    # scaling each rank's part by the world size turns that mean back into the sum.
    scale = world.size if world.sharded else 1

    def backward(loss_sum: torch.Tensor) -> torch.Tensor:
        loss = loss_sum / max(n_target, 1)
        accelerator.backward(loss * scale)
        return loss.detach()

    if world.sharded:  # FSDP gathers inside every forward: a rank with nothing to train must still join in
        for _ in range(sum(b is None for b in batches)):
            _idle_pass(model, accelerator)
    for batch in chunks:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        if getattr(loss_fn, "backward_in_parts", False):
            # A loss that backpropagates its micro-batch in parts itself, to hold less activation memory
            # (split DPO pairs): it calls ``backward`` once per part and returns its loss sum, detached.
            loss = loss_fn.backward_parts(model, batch, backward, accelerator.autocast) / max(n_target, 1)
        else:
            with accelerator.autocast():
                loss_sum, _ = loss_fn(model, batch)
            loss = backward(loss_sum)
        step_loss += float(loss)  # a CPU-GPU sync per micro-batch; cheap next to the step itself
        fault_point("step.backward")  # mid-step: gradients accumulated, the optimizer not yet stepped
    sync_gradients(params, world)  # before clipping: the norm is the global gradient's
    if cfg.max_grad_norm is not None:
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    step_loss, tokens = all_sum([step_loss, sum(count_tokens(b) for b in mine)], world)
    return step_loss, int(tokens)


def _idle_pass(model: Any, accelerator: Accelerator) -> None:
    """A forward and backward that change nothing (a one-token row, its output times zero), for a rank whose
    share of a micro-batch is empty under FSDP: the other ranks' passes gather and reduce each block's
    tensors collectively, and would wait for this one forever."""
    device = accelerator.device
    row = {"input_ids": torch.zeros(1, 1, dtype=torch.long, device=device)}
    with accelerator.autocast():
        out = model(**row, attention_mask=torch.ones_like(row["input_ids"]), use_cache=False)
    accelerator.backward(out.logits.float().sum() * 0.0)


def _step_with_oom_retry(
    model: Any,
    batches: list[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    accelerator: Accelerator,
    cfg: TrainConfig,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    splits: int,
    world: World | None = None,
) -> tuple[float, int, int]:
    """``_optimizer_step``, retried with each micro-batch in twice as many row chunks on CUDA OOM.

    Same examples, same gradient (up to float summation order); the retried step draws fresh dropout noise.
    Returns (loss, tokens, splits) so later steps keep the split that fitted.
    """
    while True:
        try:
            loss, tokens = _optimizer_step(
                model,
                batches,
                loss_fn,
                accelerator,
                cfg,
                params,
                optimizer,
                scheduler,
                splits=splits,
                world=world,
            )
            return loss, tokens, splits
        except torch.OutOfMemoryError as exc:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            rows = max(len(b["input_ids"]) for b in batches if b is not None)
            if splits >= rows:
                raise RunError(
                    "out of memory with one example per chunk: lower data.max_length, set "
                    "train.gradient_checkpointing: true, or use a smaller model / method"
                ) from exc
            splits *= 2
            print(f"tunesmith: out of memory; retrying the step in {splits} chunks per micro-batch")


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in backward (non-reentrant, so frozen-base PEFT models work)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        # Harmless with use_reentrant=False; keeps older reentrant paths from dropping adapter gradients.
        model.enable_input_require_grads()


def plan_and_fit(
    model: Any, data: TokenData, cfg: TrainConfig, precision: str, verbose: bool = True
) -> TrainConfig:
    """Print the memory plan for the worst-case micro-batch; with a budget, shrink the micro-batch to fit.

    Worst case = every row as long as the longest example, some padded (attention then takes its masked
    path), every label a target (an upper bound); an example of several rows (a preference pair, a prompt's
    sampled completions) counts all of them.
    """
    rows_per_example, longest = data.plan_shape()

    def plan(micro: int, accum: int) -> MemoryPlan:
        tokens = micro * rows_per_example * longest
        return plan_memory(model, tokens, tokens, precision, cfg.gradient_checkpointing, longest, accum)

    def estimate(micro: int) -> float:
        return plan(micro, cfg.batch_size * cfg.grad_accum // micro).total_mb

    if cfg.memory_budget_mb is not None:
        micro, accum = fit_micro_batch(cfg.batch_size, cfg.grad_accum, estimate, cfg.memory_budget_mb)
        if (micro, accum) != (cfg.batch_size, cfg.grad_accum):
            if verbose:
                print(
                    f"tunesmith: micro-batch {micro} x grad_accum {accum} fits {cfg.memory_budget_mb:.0f} MB"
                )
            cfg = cfg.model_copy(update={"batch_size": micro, "grad_accum": accum})
    if verbose:
        print(f"tunesmith: {plan(cfg.batch_size, cfg.grad_accum).line()}")
    return cfg


def _keeps_best(cfg: TrainConfig) -> bool:
    return cfg.keep_best or cfg.early_stopping.patience is not None


def _restore_best(model: Any, best_dir: Path, state: ckpt.TrainState, cfg: TrainConfig) -> bool:
    """Finish with the best evaluation's weights (early stopping's promise, or ``train.keep_best``)."""
    if not (best_dir / "trainable.safetensors").exists() or state.best_step == state.step:
        return False
    ckpt.restore_weights(best_dir, model)
    score = "" if cfg.best_metric == "val_loss" else f"val_{cfg.best_metric} {state.best_score:.4f}, "
    loss = f"val_loss {state.best_val_loss:.4f}"
    print(f"tunesmith: restored the best weights (step {state.best_step}, {score}{loss})")
    return True


def _n_batches(data: TokenData, cfg: TrainConfig, world: World) -> int:
    return batches_per_epoch(len(data.input_ids), cfg.batch_size * world.size)


def _check_resume_shape(state: ckpt.TrainState, cfg: TrainConfig, world: World, path: Path) -> None:
    """A checkpoint's data position counts global micro-batches of its run's size; another size would
    resume at other examples (length grouping even reorders the epoch), so it is refused, saying how."""
    saved, now = state.global_micro_batch, cfg.batch_size * world.size
    if saved is not None and saved != now:
        raise RunError(
            f"{path} was trained with {saved} examples per micro-batch over all processes "
            f"(train.batch_size x processes); this run has {cfg.batch_size} x {world.size} = {now}. Resume "
            f"with train.batch_size x --nproc = {saved} (e.g. --set train.batch_size={saved // world.size} "
            "when that divides), or start a new run"
        )
    state.global_micro_batch = now


def _should_eval(step: int, total_steps: int, cfg: TrainConfig) -> bool:
    return step == total_steps or (cfg.eval_every is not None and step % cfg.eval_every == 0)


def _evaluate_and_track(
    model: Any,
    val_data: TokenData,
    cfg: TrainConfig,
    pad_id: int,
    accelerator: Accelerator,
    state: ckpt.TrainState,
    log: MetricsLog,
    best_dir: Path,
    result: TrainResult,
    loss_fn: LossFn = causal_lm_loss,
    val_metrics: ValMetrics | None = None,
    hooks: LoopHooks | None = None,
    world: World | None = None,
) -> bool:
    """Validation pass, hooks, best-weights snapshot, patience. Returns True when training should stop:
    early stopping, or a hook's say (then ``result.pruned`` and ``result.interrupted`` are set too)."""
    with accelerator.autocast():
        if val_metrics is not None:
            scores = val_metrics(model, cfg.batch_size)
        else:
            scores = {
                "val_loss": evaluate_loss(
                    model, val_data, cfg.batch_size, pad_id, accelerator.device, loss_fn
                )
            }
    val_loss = scores["val_loss"]
    result.final_val_loss = val_loss
    log.write({"step": state.step, **scores, "val_ppl": math.exp(min(val_loss, 50.0))})
    fault_point("eval.logged")
    # The last pass is reported too, but stopping there would only skip the save and evaluation.
    if hooks is not None and hooks.should_stop(state.step, scores) and state.step < result.total_steps:
        print(f"\ntunesmith: stopped at step {state.step} by a validation hook (pruned)")
        result.pruned = result.interrupted = True
        return True
    # Oriented so higher is better: the loss is negated, scores are not.
    score = -val_loss if cfg.best_metric == "val_loss" else scores[f"val_{cfg.best_metric}"]
    improved = state.best_score is None or score > state.best_score + cfg.early_stopping.min_delta
    if improved:
        state.best_score, state.best_val_loss, state.best_step = score, val_loss, state.step
        state.evals_without_improvement = 0
        if _keeps_best(cfg) and (world is None or world.main or world.sharded):
            ckpt.save_weights(best_dir, model, write=world is None or world.main)
        return False
    state.evals_without_improvement += 1
    patience = cfg.early_stopping.patience
    if patience is not None and state.evals_without_improvement >= patience:
        print(f"\ntunesmith: early stopping at step {state.step}: no improvement for {patience} evaluations")
        return True
    return False
