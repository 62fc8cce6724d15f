"""GRPO and RLOO as a loss for the one loop: the loss samples, grades and scores its own completions.

Per micro-batch of prompts: sample ``num_generations`` completions each (KV-cached ``generate``, the policy
in eval mode, no gradients), grade them, turn the rewards into group-relative advantages, then one
differentiable forward over prompt + completion for the clipped policy-gradient loss. One optimisation pass
per sample batch (TRL's ``num_iterations=1``): the "old" policy is the current one, so the ratio is 1 with
the gradient of log p — clipping only matters for multi-pass variants, kept so the formula is the paper's.

Generation uses the torch RNG, which checkpoints save: a run killed and resumed samples the same completions.

    loss = GRPOLoss(objective, grade, items, tokenizer)
    train_loop(model, PromptData(prompt_ids, [], completions_per_prompt=4), None, cfg, ..., loss_fn=loss)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from tunesmith.infer.batching import collate
from tunesmith.infer.logprobs import token_logps
from tunesmith.objective import GRPOObjective
from tunesmith.train.preference import StepStats

Grade = Callable[[list[str], list[dict[str, Any]]], list[float]]
"""(completions, data rows) -> one reward per completion."""


def group_advantages(rewards: torch.Tensor, advantage: str, scale: bool = True) -> torch.Tensor:
    """Advantages of ``rewards`` shaped ``[prompts, generations]``.

    grpo: r - mean(group), divided by the group's std (+1e-4) when ``scale``; rloo: r - the mean of the
    group's other samples (an unbiased leave-one-out baseline).
    """
    g = rewards.shape[1]
    if advantage == "rloo":
        return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + 1e-4) if scale else centred


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOObjective,
    ref_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The clipped surrogate (+ beta x KL, the k3 estimator) averaged as ``cfg.loss_type`` says.

    Args:
        logps, old_logps, ref_logps: per-token log-probs ``[rows, tokens]`` (policy, sampling policy,
            reference); ``mask`` marks completion tokens; ``advantages``: one per row.
    """
    ratio = torch.exp(logps - old_logps)
    high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - cfg.epsilon, 1 + high) * adv)
    if ref_logps is not None and cfg.beta > 0:
        diff = ref_logps - logps
        per_token = per_token + cfg.beta * (torch.exp(diff) - diff - 1)
    per_token, maskf = per_token * mask, mask.float()
    if cfg.loss_type == "grpo":  # each sequence's mean, then the mean over sequences
        return (per_token.sum(dim=1) / maskf.sum(dim=1).clamp(min=1)).mean()
    if cfg.loss_type == "dr_grpo":  # a constant denominator: no length bias
        return per_token.sum() / (mask.shape[0] * cfg.max_new_tokens)
    return per_token.sum() / maskf.sum().clamp(min=1)  # dapo: every token of the batch weighs the same


def completion_mask(completions: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """True up to and including each row's first end-of-sequence token (what the model actually said)."""
    if eos_id is None:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = completions == eos_id
    after_first = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return ~after_first


def completed_rows(
    batch: dict[str, torch.Tensor],
    completions: torch.Tensor,
    mask: torch.Tensor,
    g: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Prompt + completion rows, right-padded as in training, labels on the completion only.

    Re-collated rather than reusing generation's left padding: a plain forward numbers positions from the
    row's first column, so left padding would shift them against what generation (mask-aware) used.
    """
    prompts = [
        ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    ids, labels = [], []
    for row in range(completions.shape[0]):
        said = completions[row][mask[row]].tolist()
        ids.append(prompts[row // g] + said)
        labels.append([-100] * len(prompts[row // g]) + said)
    return {k: v.to(device) for k, v in collate(ids, labels, pad_id=0).items()}


class GRPOLoss(StepStats):
    """``loss_fn`` for :func:`~tunesmith.train.loop.train_loop` over :class:`PromptData` batches."""

    def __init__(self, cfg: GRPOObjective, grade: Grade, items: list[dict[str, Any]], tokenizer: Any) -> None:
        super().__init__()
        self.cfg, self.grade, self.items, self.tokenizer = cfg, grade, items, tokenizer

    @torch.no_grad()
    def sample(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``num_generations`` completions per prompt (rows grouped by prompt), as token ids."""
        was_training = model.training
        model.eval()
        out = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            do_sample=True,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            top_k=0,
            max_new_tokens=self.cfg.max_new_tokens,
            num_return_sequences=self.cfg.num_generations,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        model.train(was_training)
        return out[:, batch["input_ids"].shape[1] :]

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        g, t0 = self.cfg.num_generations, time.perf_counter()
        completions = self.sample(model, batch)
        mask = completion_mask(completions, self.tokenizer.eos_token_id)
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(completions.masked_fill(~mask, 0), skip_special_tokens=True)
        rows = [self.items[int(i)] for i in batch["index"] for _ in range(g)]
        rewards = torch.tensor(self.grade([t.strip() for t in texts], rows), dtype=torch.float32)
        advantages = group_advantages(
            rewards.view(-1, g), self.cfg.advantage, self.cfg.scale_rewards
        ).flatten()
        t2 = time.perf_counter()
        full = completed_rows(batch, completions, mask, g, batch["input_ids"].device)
        logps, target = token_logps(model, full)
        ref = None
        if self.cfg.beta > 0:  # the reference is the base: the same model with its adapter switched off
            with (
                torch.no_grad(),
                model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext(),
            ):
                ref, _ = token_logps(model, full)
        loss = policy_loss(logps, logps.detach(), advantages.to(logps.device), target, self.cfg, ref)
        self.add(
            {
                "reward": rewards.view(-1, g).mean(dim=1),
                "reward_std": rewards.view(-1, g).std(dim=1),
                "completion_tokens": mask.sum(dim=1).float().view(-1, g).mean(dim=1),
            }
        )
        self.add_time("generate_s", t1 - t0)
        self.add_time("grade_s", t2 - t1)
        n_prompts = batch["targets"].sum()
        return loss * n_prompts, n_prompts
