"""Batched greedy generation and label scoring by log-likelihood — the two ways a model is evaluated.

Both take token ids (the data pipeline renders prompts), so they work for any model and chat template.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from tunesmith.train.batching import collate


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions for each prompt, in input order, decoded without special tokens.

    Prompts are sorted by length and left-padded per batch (less padding = less wasted compute on CPU).
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    pad_id = tokenizer.pad_token_id
    device = model_device(model)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start : start + batch_size]
        batch = collate([prompts[i] for i in idx], None, pad_id, pad_left=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    model.train(was_training)
    return outputs


@torch.no_grad()
def label_log_likelihoods(
    model: Any,
    prompts: list[list[int]],
    label_token_ids: list[list[int]],
    pad_id: int,
    batch_size: int = 16,
    desc: str = "score labels",
) -> torch.Tensor:
    """Sum of log-probabilities of each label's tokens after each prompt: a (n_prompts, n_labels) tensor.

    Label tokens should end with the end-of-turn token, so "joy" is not rewarded for being a prefix of
    "joyful". Cost: n_prompts x n_labels forward passes, batched.
    """
    was_training = model.training
    model.eval()
    pairs = [(p, lab) for p in range(len(prompts)) for lab in range(len(label_token_ids))]
    scores = torch.zeros(len(prompts), len(label_token_ids))
    device = model_device(model)
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", leave=False):
        chunk = pairs[start : start + batch_size]
        ids = [prompts[p] + label_token_ids[lab] for p, lab in chunk]
        labels = [[-100] * len(prompts[p]) + label_token_ids[lab] for p, lab in chunk]
        batch = {k: v.to(device) for k, v in collate(ids, labels, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logits = logits[:, -batch["input_ids"].shape[1] :]  # prompt tuning prepends virtual-token logits
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = batch["labels"][:, 1:]
        mask = targets != -100
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        for row, (p, lab) in enumerate(chunk):
            scores[p, lab] = picked[row].sum().cpu()
    model.train(was_training)
    return scores
