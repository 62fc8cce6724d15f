"""The sides of bench/bench_dpo.py; each runs in its own process (``--side``) and writes one JSON.

All sides: the default model (or ``--model-path``) in fp32, LoRA r16/alpha 32 on all linear layers
(dropout 0), lr 5e-5 with cosine decay and no warm-up, ``--batch`` pairs per optimizer step, ``--steps``
steps, seed 0, on the pairs tunesmith's own preparation rendered (``prepare_pairs``). The DPO sides train
sigmoid DPO, beta 0.1; ``tunesmith-sft`` trains the chosen answers only (the memory yardstick). Peak RSS is
``ru_maxrss`` of the side's process after training; CPU seconds (``time.process_time``) are recorded
because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sides import peak_rss_mb

LR = 5e-5
BETA = 0.1
TUNESMITH_SIDES = {
    "tunesmith-dpo": ({}, {}),
    "tunesmith-dpo-joint": ({}, {"pair_backward": "joint"}),
    "tunesmith-dpo-gc": ({"gradient_checkpointing": True}, {}),
    "tunesmith-sft": ({}, {}),
}
"""(TrainConfig fields, DPOObjective fields) each tunesmith side sets on top of the shared ones."""


def prepare_pairs(data_file: Path, tokenizer: Any, max_length: int, n_pairs: int) -> Any:
    """The first ``n_pairs`` pairs of ``data_file`` as tunesmith renders them (no hold-out, tail cut at
    ``max_length``): a ``PairSplit`` both sides train on."""
    from tunesmith.config import DataConfig
    from tunesmith.data.preference import PairSplit, prepare_preferences

    cfg = DataConfig(train=str(data_file), validation_fraction=0.0, max_length=max_length)
    split = prepare_preferences(cfg, tokenizer, seed=0, shape="preference").train
    return PairSplit(*(field[:n_pairs] for field in vars(split).values()))


def prompt_length(labels: list[int]) -> int:
    """Tokens before the first trained one (tunesmith's labels are -100 on the prompt)."""
    return next(i for i, label in enumerate(labels) if label != -100)


def trl_rows(split: Any) -> list[dict[str, list[int]]]:
    """The pairs in the tokenized form DPOTrainer trains on: prompt, chosen and rejected completion ids."""
    rows = []
    for c_ids, c_labels, r_ids in zip(split.chosen_ids, split.chosen_labels, split.rejected_ids, strict=True):
        n = prompt_length(c_labels)
        rows.append({"prompt_ids": c_ids[:n], "chosen_ids": c_ids[n:], "rejected_ids": r_ids[n:]})
    return rows


def trl_text_rows(split: Any, tokenizer: Any) -> list[dict[str, str]]:
    """The same pairs as TRL's plain-text form (prompt, chosen, rejected), decoded from tunesmith's ids."""
    return [{k.removesuffix("_ids"): tokenizer.decode(v) for k, v in row.items()} for row in trl_rows(split)]


def count_identical(split: Any, trl_dataset: Any, max_length: int) -> int:
    """Pairs whose chosen and rejected sequences, as TRL's collator builds them (prompt + completion, cut at
    ``max_length``, keep_start), are token for token tunesmith's."""
    same = 0
    for i, row in enumerate(trl_dataset):
        chosen = (row["prompt_ids"] + row["chosen_ids"])[:max_length]
        rejected = (row["prompt_ids"] + row["rejected_ids"])[:max_length]
        same += chosen == split.chosen_ids[i] and rejected == split.rejected_ids[i]
    return same


def _timed(fn: Any) -> tuple[Any, float, float]:
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu_start


def _summary(tokens: int, seconds: float, cpu_seconds: float, loss: float | None) -> dict[str, Any]:
    return {
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "train_loss_last": loss,
    }


def run_tunesmith(args: argparse.Namespace) -> dict[str, Any]:
    from tunesmith.config import LoraMethod, RunConfig, TrainConfig
    from tunesmith.infer.batching import PairData, TokenData
    from tunesmith.methods import prepare_model
    from tunesmith.models.loading import load_causal_lm, load_tokenizer
    from tunesmith.objective import DPOObjective
    from tunesmith.pipelines.preference import attach_reference
    from tunesmith.train.loop import train_loop
    from tunesmith.train.losses import causal_lm_loss
    from tunesmith.train.preference import PreferenceLoss

    model_ref = args.model_path or "default"
    tokenizer = load_tokenizer(model_ref)
    split = prepare_pairs(args.data_file, tokenizer, args.max_length, args.steps * args.batch)
    model = prepare_model(load_causal_lm(model_ref), LoraMethod(r=args.lora_r, alpha=2.0 * args.lora_r))
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch,
        lr=LR,
        scheduler="cosine",
        log_every=1,
        **TUNESMITH_SIDES[args.side][0],
    )
    ref = {"reference_seconds": 0.0, "reference_cpu_seconds": 0.0}
    if args.side == "tunesmith-sft":
        data: Any = TokenData(split.chosen_ids, split.chosen_labels)
        loss_fn: Any = causal_lm_loss
    else:
        data = PairData(split.chosen_ids, split.chosen_labels, split.rejected_ids, split.rejected_labels)
        run_cfg = RunConfig.model_validate(
            {"name": "bench-dpo", "model": {"name": model_ref}, "data": {"train": str(args.data_file)}}
        )
        # With LoRA the start model is the reference: one no-grad pass before training, no disk cache.
        _, ref_s, ref_cpu = _timed(lambda: attach_reference(None, run_cfg, {"train": data}, lambda: model))
        ref = {"reference_seconds": ref_s, "reference_cpu_seconds": ref_cpu}
        objective = DPOObjective(loss="sigmoid", beta=BETA, **TUNESMITH_SIDES[args.side][1])
        loss_fn = PreferenceLoss(objective)
    with tempfile.TemporaryDirectory() as run_dir:
        result, seconds, cpu_seconds = _timed(
            lambda: train_loop(
                model, data, None, cfg, seed=0, run_dir=Path(run_dir), pad_id=0, loss_fn=loss_fn
            )
        )
    loss = result.history[-1]["train_loss"] if result.history else None
    out = _summary(result.train_tokens, seconds, cpu_seconds, loss)
    out.update(ref)
    out["total_seconds"] = seconds + ref["reference_seconds"]
    out["total_cpu_seconds"] = cpu_seconds + ref["reference_cpu_seconds"]
    out["pairs"] = len(split)
    return out


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from tunesmith.models.loading import load_causal_lm, load_tokenizer

    model_ref = args.model_path or "default"
    tokenizer = load_tokenizer(model_ref)
    split = prepare_pairs(args.data_file, tokenizer, args.max_length, args.steps * args.batch)

    class IdsDPOTrainer(DPOTrainer):
        """DPOTrainer on tunesmith's token ids: TRL re-rendering the chat would be a different dataset."""

        def _prepare_dataset(self, dataset: Any, *_: Any, **__: Any) -> Any:
            return dataset

    with tempfile.TemporaryDirectory() as out_dir:
        config = DPOConfig(
            output_dir=out_dir,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            learning_rate=LR,
            lr_scheduler_type="cosine",
            beta=BETA,
            loss_type=["sigmoid"],
            max_length=args.max_length,
            gradient_checkpointing=args.side == "trl-dpo",  # TRL default on; trl-dpo-nogc: off
            bf16=False,  # fp32 like tunesmith on CPU (bf16 without AVX512-BF16 is ~30x slower)
            use_cpu=True,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
        )
        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        trainer = IdsDPOTrainer(
            model=load_causal_lm(model_ref),
            args=config,
            train_dataset=Dataset.from_list(trl_rows(split)),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        identical = count_identical(split, trainer.train_dataset, args.max_length)
        _, seconds, cpu_seconds = _timed(trainer.train)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    # Real tokens trained: every pair's chosen + rejected rows (the same rows tunesmith counts).
    tokens = sum(len(c) + len(r) for c, r in zip(split.chosen_ids, split.rejected_ids, strict=True))
    out = _summary(tokens, seconds, cpu_seconds, losses[-1] if losses else None)
    out.update({"identical_pairs": identical, "pairs": len(split)})
    return out


def run_side(args: argparse.Namespace) -> None:
    """Run ``args.side`` and write its JSON to ``args.side_out``."""
    result = (run_trl if args.side.startswith("trl") else run_tunesmith)(args)
    args.side_out.write_text(json.dumps(result))
    print(json.dumps(result))
