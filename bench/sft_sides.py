"""The two sides of bench/bench_sft.py; each runs in its own process (``--side``) and writes one JSON.

Both sides: the default model (or ``--model``'s random Llama) in fp32 (bf16 autocast on GPU), LoRA
r/alpha=2r on all linear layers (dropout 0), AdamW lr 2e-4 with cosine decay and no warm-up, ``--batch``
examples per optimizer step, ``--steps`` steps, max length ``--max-length``, seed 0. Timing covers the
training call only (tokenization and model loading excluded on both sides); peak RSS is read right after
training, before the shared validation scoring. CPU seconds (``time.process_time``, all threads) are
recorded too: on a shared machine wall time depends on the neighbours' load, tokens per CPU-second much less
(equal to wall throughput x threads on an idle machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sides import peak_rss_mb

LR = 2e-4
SIDE_SETTINGS: dict[str, dict[str, Any]] = {
    "tunesmith": {},
    "tunesmith-fp32": {"precision": "fp32"},
    "tunesmith-gc": {"gradient_checkpointing": True},
    "tunesmith-packed": {"packing": True},
    "tunesmith-ungrouped": {"group_by_length": False},
    "tunesmith-full-logits": {},
}
"""TrainConfig fields each tunesmith side sets on top of the shared ones (one lever per side);
``tunesmith-full-logits`` changes the loss instead: the model's own forward, logits at every position."""


def _model_ref(args: argparse.Namespace) -> str:
    """The model both sides train: the embedded default, or the random Llama the driver wrote (--model)."""
    return args.model_path or "default"


def _peak_gpu_mb() -> dict[str, float]:
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def _param_counts(model: Any) -> tuple[int, int]:
    """(frozen matmul parameters incl. the tied output head, trainable parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed = base.get_input_embeddings().weight.numel()
    # The embedding lookup is no matmul, but with tied weights the same matrix is the output head: count once.
    return frozen - embed + base.get_output_embeddings().weight.numel(), trainable


def _validation(tokenizer: Any, data_dir: Path, max_length: int) -> Any:
    """The validation split rendered by tunesmith: both sides are scored on exactly these tokens."""
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import prepare_data
    from tunesmith.train.loop import TokenData

    cfg = DataConfig(
        train=str(data_dir / "train.chat.jsonl"),
        validation=str(data_dir / "validation.chat.jsonl"),
        max_length=max_length,
    )
    data = prepare_data(cfg, tokenizer, seed=0)
    return data, TokenData(data.validation.input_ids, data.validation.labels)


def _val_loss(model: Any, val: Any, pad_id: int) -> float:
    from tunesmith.train.loop import evaluate_loss

    device = next(model.parameters()).device
    return evaluate_loss(model, val, 8, pad_id, device)


def run_tunesmith(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tunesmith.config import LoraMethod, TrainConfig
    from tunesmith.methods import prepare_model
    from tunesmith.models.loading import load_causal_lm, load_tokenizer
    from tunesmith.train.loop import TokenData, train_loop
    from tunesmith.train.losses import causal_lm_loss, full_logits_loss

    tokenizer = load_tokenizer(_model_ref(args))
    data, val = _validation(tokenizer, args.data_dir, args.max_length)
    torch.manual_seed(0)  # the LoRA initialisation: the same on every run, so runs compare number for number
    model = prepare_model(
        load_causal_lm(_model_ref(args)), LoraMethod(r=args.lora_r, alpha=2.0 * args.lora_r)
    )
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch,
        lr=LR,
        scheduler="cosine",
        log_every=1,
        **SIDE_SETTINGS[args.side],
    )
    with tempfile.TemporaryDirectory() as run_dir:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_loop(
            model,
            TokenData(data.train.input_ids, data.train.labels),
            None,
            cfg,
            seed=0,
            run_dir=Path(run_dir),
            pad_id=tokenizer.pad_token_id,
            loss_fn=full_logits_loss if args.side == "tunesmith-full-logits" else causal_lm_loss,
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rss, gpu = peak_rss_mb(), _peak_gpu_mb()
    base, trainable = _param_counts(model)
    return {
        "tokens": result.train_tokens,
        "train_seconds": seconds,
        "tokens_per_s": result.train_tokens / seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": result.train_tokens / cpu_seconds,
        "peak_rss_mb": rss,
        **gpu,
        "val_loss": _val_loss(model, val, tokenizer.pad_token_id),
        "base_params": base,
        "trainable_params": trainable,
        "train_loss_last": result.history[-1]["train_loss"] if result.history else None,
    }


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.loading import load_tokenizer, resolve_model_path

    train = load_dataset("json", data_files=str(args.data_dir / "train.pc.jsonl"), split="train")
    with tempfile.TemporaryDirectory() as out_dir:
        config = SFTConfig(
            output_dir=out_dir,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            learning_rate=LR,
            lr_scheduler_type="cosine",
            max_length=args.max_length,
            # On CPU, fp32: TRL's default bf16 is ~30x slower than fp32 without AVX512-BF16. On GPU, bf16
            # autocast, as tunesmith's precision: auto picks there.
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            use_cpu=not torch.cuda.is_available(),
            include_num_input_tokens_seen="non_padding",  # Trainer's own count of real tokens trained on
        )
        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        trainer = SFTTrainer(
            model=str(resolve_model_path(_model_ref(args))),
            args=config,
            train_dataset=train,
            peft_config=peft_config,
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    rss, gpu = peak_rss_mb(), _peak_gpu_mb()
    model = trainer.model
    tokenizer = load_tokenizer(_model_ref(args))
    _, val = _validation(tokenizer, args.data_dir, args.max_length)
    base, trainable = _param_counts(model)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "peak_rss_mb": rss,
        **gpu,
        "val_loss": _val_loss(model, val, tokenizer.pad_token_id),
        "base_params": base,
        "trainable_params": trainable,
        "train_loss_last": losses[-1] if losses else None,
    }


def run_side(args: argparse.Namespace) -> None:
    result = (run_trl if args.side == "trl" else run_tunesmith)(args)
    args.side_out.write_text(json.dumps(result))
    print(json.dumps(result))
