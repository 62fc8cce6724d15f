"""One LoRA training step on the default model, eager vs ``torch.compile``d decoder (issue #24: "try
torch.compile on the training step and keep it if it wins").

    .venv/bin/python bench/bench_compile_step.py eager fp32
    .venv/bin/python bench/bench_compile_step.py compile fp32      # or bf16 (autocast)

The step is what tunesmith's loop runs for the demo: r 32 all-linear LoRA, batch 16 x 36-44 tokens (varying
lengths, so the compiled graph must be dynamic), the chunked target-position loss, AdamW. Prints each step's
seconds, the first (compile) step and the steady median. Measured numbers: docs/measurements.md.
"""

from __future__ import annotations

import sys
import time

import torch

from tunesmith.config import LoraMethod
from tunesmith.infer.loss import causal_lm_loss
from tunesmith.methods.lora import prepare as add_lora
from tunesmith.models.loading import DEFAULT_MODEL, load_causal_lm

LENGTHS = [36, 40, 44, 38, 42, 36, 40, 44, 38, 42, 39, 41, 37, 43]
BATCH = 16


def fake_batch(length: int) -> dict[str, torch.Tensor]:
    """Random token ids, right padding on some rows, loss on the second half (the answer)."""
    ids = torch.randint(100, 40000, (BATCH, length))
    mask = torch.ones_like(ids)
    for row in range(BATCH):
        mask[row, length - row % 5 :] = 0
    labels = ids.clone()
    labels[:, : length // 2] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def main(mode: str, precision: str) -> None:
    torch.manual_seed(0)
    model = load_causal_lm(DEFAULT_MODEL, "float32")
    model = add_lora(model, LoraMethod(r=32, alpha=64, dropout=0.0))  # the demo's method section
    model.train()
    if mode == "compile":
        model.get_base_model().get_decoder().compile(dynamic=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    seconds = []
    for step, length in enumerate(LENGTHS):
        batch = fake_batch(length)
        start = time.perf_counter()
        with autocast:
            loss_sum, n = causal_lm_loss(model, batch)
        (loss_sum / n).backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        print(f"step {step} length {length}: {seconds[-1]:.2f} s", flush=True)
    steady = sorted(seconds[4:])[len(seconds[4:]) // 2]
    print(f"{mode} {precision}: first step {seconds[0]:.1f} s, steady median {steady:.2f} s/step")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "eager", sys.argv[2] if len(sys.argv) > 2 else "fp32")
