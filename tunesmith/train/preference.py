"""Preference objectives as losses for the one loop: the DPO family on sequence log-probs, KTO on unpaired
feedback, and the Bradley-Terry loss of a reward model.

The formulas are pure functions of per-example log-probs (tested against hand-computed values); the loss
objects wrap them for :func:`tunesmith.train.loop.train_loop` (``loss_fn(model, batch) -> (sum, units)``,
one unit per pair or row) and keep the per-step measurements the loop logs (``pop_stats``).

Reference log-probs come in the batch (``ref_chosen_logps`` ...), computed once before training and cached
on disk (:mod:`tunesmith.pipelines.preference`): no reference model is in memory while the policy trains.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.infer.logprobs import sequence_logps
from tunesmith.objective import DPOObjective


def _pad_to(x: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=fill)


def pair_forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Chosen and rejected rows in one forward pass (one larger matmul beats two on every backend).

    Returns (chosen logps, rejected logps, chosen token counts, rejected token counts), one per pair.
    """
    width = max(batch["input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    both = {
        key: torch.cat([_pad_to(batch[key], width, fill), _pad_to(batch[f"rejected_{key}"], width, fill)])
        for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))
    }
    logps, counts = sequence_logps(model, both)
    n = batch["input_ids"].shape[0]
    return logps[:n], logps[n:], counts[:n], counts[n:]


def dpo_losses(
    cfg: DPOObjective,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards of the chosen and rejected answers.

    Args:
        chosen, rejected: summed log-probs of the answers under the policy.
        chosen_tokens, rejected_tokens: their token counts (length-normalised variants divide by them).
        ref_chosen, ref_rejected: the same under the reference (sigmoid, ipo, hinge; None for simpo, orpo).

    With h = (chosen - ref_chosen) - (rejected - ref_rejected):
    sigmoid -(1-e) log s(beta h) - e log s(-beta h) (e = label_smoothing); ipo (h' - 1/(2 beta))^2 with h'
    the same on per-token means; hinge max(0, 1 - beta h); simpo -log s(beta (mean_c - mean_r) - gamma);
    orpo -mean_c - beta log s(log odds(mean_c) - log odds(mean_r)), odds(p) = p / (1 - p).
    Rewards: beta (policy - reference) per answer; reference-free: beta x the per-token mean log-prob.
    """
    beta, loss = cfg.beta, cfg.loss
    mean_c, mean_r = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
    if loss in ("simpo", "orpo"):
        rewards = beta * mean_c.detach(), beta * mean_r.detach()
        if loss == "simpo":
            return -F.logsigmoid(beta * (mean_c - mean_r) - cfg.simpo_gamma), *rewards

        def log_odds(mean: torch.Tensor) -> torch.Tensor:  # log(p / (1 - p)) of the per-token probability
            return mean - torch.log1p(-torch.exp(mean).clamp(max=1 - 1e-6))

        return -mean_c - beta * F.logsigmoid(log_odds(mean_c) - log_odds(mean_r)), *rewards
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"objective.loss {loss} needs the reference log-probs")
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss == "ipo":
        per_token = (mean_c - ref_chosen / chosen_tokens.clamp(min=1)) - (
            mean_r - ref_rejected / rejected_tokens.clamp(min=1)
        )
        losses = (per_token - 1 / (2 * beta)) ** 2
    elif loss == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"objective.loss {loss} is not a pairwise loss")
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def kto_losses(
    cfg: DPOObjective, logps: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO per-row losses and rewards (beta x the policy/reference log-ratio).

    The reference point z0 is the batch's mean log-ratio, clamped at 0 and detached: an in-batch estimate of
    KL(policy || reference). KTO's paper estimates it on mismatched (prompt, other completion) pairs, one more
    forward per step; the batch mean costs nothing and has the same expectation up to the prompt coupling.
    Desirable rows lose desirable_weight (1 - s(beta (ratio - z0))), undesirable ones undesirable_weight
    (1 - s(beta (z0 - ratio))).
    """
    ratio = logps - ref
    z0 = ratio.detach().mean().clamp(min=0)
    good = cfg.desirable_weight * (1 - torch.sigmoid(cfg.beta * (ratio - z0)))
    bad = cfg.undesirable_weight * (1 - torch.sigmoid(cfg.beta * (z0 - ratio)))
    return torch.where(desirable, good, bad), cfg.beta * ratio.detach()


def bradley_terry_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, center: float | None = None
) -> torch.Tensor:
    """Reward-model loss per pair: -log s(r_chosen - r_rejected), plus center x (r_chosen + r_rejected)^2
    when ``center`` is set (keeps the rewards' scale anchored at 0, so they can be compared across runs)."""
    losses = -F.logsigmoid(chosen - rejected)
    if center:
        losses = losses + center * (chosen + rejected) ** 2
    return losses


class StepStats:
    """Per-step means of named measurements (over micro-batches, weighted by their examples)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._times: dict[str, float] = {}

    def add_time(self, key: str, seconds: float) -> None:
        """A duration summed over the step's micro-batches (not averaged)."""
        self._times[key] = self._times.get(key, 0.0) + seconds

    def add(self, values: dict[str, torch.Tensor]) -> None:
        n = next(iter(values.values())).numel()
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value.float().sum())
        self._count += n

    def pop_stats(self) -> dict[str, float]:
        out = {k: round(v / max(self._count, 1), 6) for k, v in self._sums.items()}
        out.update({k: round(v, 3) for k, v in self._times.items()})
        self._sums, self._count, self._times = {}, 0, {}
        return out


def pair_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reward accuracy (chosen above rejected), margin and the rewards themselves, per pair."""
    return {
        "reward_accuracy": (chosen_rewards > rejected_rewards).float(),
        "reward_margin": chosen_rewards - rejected_rewards,
        "reward_chosen": chosen_rewards,
        "reward_rejected": rejected_rewards,
    }


class PreferenceLoss(StepStats):
    """The DPO family (pairs) and KTO (unpaired rows) as a loop loss; one loss unit per pair / row.

    Pair losses with ``pair_backward: split`` train through :meth:`backward_parts` (the loop calls it when
    ``backward_in_parts`` is true); evaluation and ``joint`` use ``__call__``, one forward over both halves.
    """

    def __init__(self, cfg: DPOObjective) -> None:
        super().__init__()
        self.cfg = cfg
        self.backward_in_parts = cfg.loss != "kto" and cfg.pair_backward == "split"

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.loss == "kto":
            logps, _ = sequence_logps(model, batch)
            losses, rewards = kto_losses(self.cfg, logps, batch["ref_logps"], batch["desirable"])
            self.add({"reward": rewards, "logps": logps.detach()})
            return losses.sum(), batch["targets"].sum()
        chosen, rejected, n_c, n_r = pair_forward(model, batch)
        return self._pair_losses(batch, chosen, rejected, n_c, n_r).sum(), batch["targets"].sum()

    def backward_parts(
        self,
        model: Any,
        batch: dict[str, torch.Tensor],
        backward: Callable[[torch.Tensor], Any],
        autocast: Callable[[], AbstractContextManager[Any]],
    ) -> torch.Tensor:
        """One micro-batch of pairs, backpropagated one half at a time; returns the loss sum (detached).

        A pair loss depends on each answer only through its summed log-prob, so its gradient is
        dL/dchosen x grad(chosen) + dL/drejected x grad(rejected). The rejected half's log-probs come from a
        no-grad pass; the chosen half runs with gradients; the two scalar weights follow from the loss; the
        chosen graph is backpropagated with its weight and freed before the rejected half runs again with
        gradients. Peak activations: one half's. Cost: one extra no-grad forward of the rejected half.
        With dropout the two rejected passes draw different masks (the weight comes from the first).
        """
        chosen_half, rejected_half = _half(batch, ""), _half(batch, "rejected_")
        # The no-grad pass first: its logits chunk (up to ~0.8 GB with a 49k vocabulary) is freed before the
        # chosen half's graph exists, rather than stacked on top of it.
        with torch.no_grad(), autocast():
            rejected, n_r = sequence_logps(model, rejected_half)
        with autocast():
            chosen, n_c = sequence_logps(model, chosen_half)
        # The loss on detached leaves gives the per-pair weights; the leaves keep the graph out of it.
        c_leaf, r_leaf = chosen.detach().requires_grad_(), rejected.detach().requires_grad_()
        with torch.enable_grad():
            losses = self._pair_losses(batch, c_leaf, r_leaf, n_c, n_r)
            w_chosen, w_rejected = torch.autograd.grad(losses.sum(), (c_leaf, r_leaf))
        backward((w_chosen * chosen).sum())
        del chosen  # its graph is freed by the backward above; the rejected half's graph is built next
        with autocast():
            rejected, _ = sequence_logps(model, rejected_half)
        backward((w_rejected * rejected).sum())
        return losses.sum().detach()

    def _pair_losses(
        self,
        batch: dict[str, torch.Tensor],
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        n_c: torch.Tensor,
        n_r: torch.Tensor,
    ) -> torch.Tensor:
        """Per-pair losses of the configured DPO-family loss; records the step's pair measurements."""
        losses, r_c, r_r = dpo_losses(
            self.cfg,
            chosen,
            rejected,
            n_c,
            n_r,
            batch.get("ref_chosen_logps"),
            batch.get("ref_rejected_logps"),
        )
        # prefers_chosen: the per-token log-prob prefers the chosen answer, a measure that needs no reference
        # (so the base model has it too: its zero-shot preference).
        prefers = (chosen / n_c.clamp(min=1) > rejected / n_r.clamp(min=1)).float()
        self.add(
            {
                **pair_stats(r_c, r_r),
                "prefers_chosen": prefers,
                "logps_chosen": chosen.detach(),
                "logps_rejected": rejected.detach(),
            }
        )
        return losses


def _half(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The chosen (prefix "") or rejected ("rejected_") rows of a pair batch, each at its own width."""
    return {key: batch[f"{prefix}{key}"] for key in ("input_ids", "attention_mask", "labels")}


def last_token_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A scalar-head model's score (``score``, one output) at each right-padded row's last real token."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, base.base_model_prefix)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return base.score(picked).float().squeeze(-1)


class RewardLoss(StepStats):
    """Bradley-Terry on pairs for a reward model (``objective: reward``)."""

    def __init__(self, center: float | None = None) -> None:
        super().__init__()
        self.center = center

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(batch["input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        ids = torch.cat(
            [_pad_to(batch["input_ids"], width, 0), _pad_to(batch["rejected_input_ids"], width, 0)]
        )
        mask = torch.cat(
            [_pad_to(batch["attention_mask"], width, 0), _pad_to(batch["rejected_attention_mask"], width, 0)]
        )
        scores = last_token_scores(model, ids, mask)
        n = batch["input_ids"].shape[0]
        chosen, rejected = scores[:n], scores[n:]
        self.add(pair_stats(chosen.detach(), rejected.detach()))
        return bradley_terry_losses(chosen, rejected, self.center).sum(), batch["targets"].sum()
