"""Memory planner against autograd's exact saved-tensor count; auto-fit; gradient checkpointing; OOM retry."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.train.test_train_loop import PAD, VOCAB, _cfg, _losses, _run
from tunesmith.config import FullMethod, LoraMethod
from tunesmith.infer.batching import collate
from tunesmith.methods import prepare_model
from tunesmith.models.fused import fuse_gated_mlps
from tunesmith.models.memory import (
    MB,
    activation_bytes_per_token,
    fit_micro_batch,
    plan_memory,
    saved_activation_bytes,
)
from tunesmith.train.loop import enable_gradient_checkpointing
from tunesmith.train.losses import causal_lm_loss

ACTIVATION_TOLERANCE = 0.10
"""The per-token formula is calibrated on Llama shapes; 10% covers the small per-model constants it drops."""


def _batch(rows: int = 4, width: int = 48, target_from: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (rows, width), generator=g).tolist()
    labels = [[-100] * target_from + row[target_from:] for row in ids]
    return collate(ids, labels, PAD)


@pytest.mark.parametrize("method", [FullMethod(), LoraMethod(r=8, alpha=16)], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "ckpt"])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("precision", ["no", "bf16"], ids=["fp32", "bf16"])
def test_activation_estimate_matches_measured(method, checkpointing, fused, precision):
    model = prepare_model(make_tiny_llama(VOCAB), method).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    if fused:
        assert fuse_gated_mlps(model) == 2
    batch = _batch()
    tokens = batch["input_ids"].numel()
    targets = int((batch["labels"][:, 1:] != -100).sum())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        measured = saved_activation_bytes(model, causal_lm_loss, batch)
    # Saved tensors only: the layer recomputed during checkpointed backward is a transient on top.
    per_token = activation_bytes_per_token(model, targets / tokens, precision, checkpointing, recompute=False)
    assert per_token * tokens == pytest.approx(measured, rel=ACTIVATION_TOLERANCE)


def test_plan_counts_weights_grads_and_adamw_exactly():
    model = prepare_model(make_tiny_llama(VOCAB), LoraMethod(r=4, alpha=8))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = plan_memory(model, tokens=64, target_tokens=32)
    assert plan.grads_mb == pytest.approx(trainable * 4 / MB)
    assert plan.optimizer_mb == pytest.approx(trainable * 8 / MB)
    assert plan.total_mb > plan.weights_mb + plan.grads_mb + plan.optimizer_mb + plan.activations_mb
    bf16 = plan_memory(model, 64, 32, precision="bf16").activations_mb  # hidden-size values stay fp32-sized
    assert plan.activations_mb / 2 < bf16 < plan.activations_mb
    assert plan.line().startswith("memory plan: ~")


def test_fit_micro_batch_keeps_global_batch():
    def estimate(micro: int) -> float:
        return 100 + 50 * micro

    assert fit_micro_batch(8, 1, estimate, budget_mb=10_000) == (8, 1)
    assert fit_micro_batch(8, 2, estimate, budget_mb=320) == (4, 4)  # 16 = 4 x 4; 5..8 too big
    assert fit_micro_batch(6, 1, estimate, budget_mb=320) == (3, 2)  # 4 fits but does not divide 6
    assert fit_micro_batch(8, 1, estimate, budget_mb=10) == (1, 8)


def test_budget_shrinks_micro_batch_in_the_loop(tmp_path, capsys):
    model = prepare_model(make_tiny_llama(VOCAB), FullMethod())
    full = plan_memory(model, 8 * 13, 8 * 13).total_mb
    half = plan_memory(model, 4 * 13, 4 * 13).total_mb
    _run(tmp_path, "fit", _cfg(batch_size=8, max_steps=2, memory_budget_mb=(full + half) / 2))
    out = capsys.readouterr().out
    assert "micro-batch 4 x grad_accum 2 fits" in out and "memory plan: ~" in out


def test_gradient_checkpointing_leaves_losses_and_grads_unchanged(tmp_path):
    batch = _batch()
    grads = []
    for checkpointing in (False, True):
        model = prepare_model(make_tiny_llama(VOCAB), LoraMethod(r=4, alpha=8)).train()
        if checkpointing:
            enable_gradient_checkpointing(model)
        loss, _ = causal_lm_loss(model, batch)
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][1], grads[1][1], strict=True))
    _, _, plain = _run(tmp_path, "plain", _cfg(max_steps=3), LoraMethod(r=4, alpha=8))
    _, _, ckpt = _run(
        tmp_path, "ckpt", _cfg(max_steps=3, gradient_checkpointing=True), LoraMethod(r=4, alpha=8)
    )
    assert _losses(ckpt) == pytest.approx(_losses(plain), abs=1e-5)


def test_oom_retry_splits_rows_and_keeps_the_step(tmp_path, monkeypatch):
    import tunesmith.train.loop as loop

    real = loop._optimizer_step
    calls = []

    def flaky(*args, splits: int, **kwargs):
        calls.append(splits)
        if splits == 1:  # the first attempt of every step "runs out of memory"
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, splits=splits, **kwargs)

    _, _, plain = _run(tmp_path, "plain", _cfg(max_steps=3))
    monkeypatch.setattr(loop, "_optimizer_step", flaky)
    _, _, retried = _run(tmp_path, "retried", _cfg(max_steps=3))
    assert calls == [1, 2, 2, 2]  # one retry, then the split that fitted is kept
    assert _losses(retried) == pytest.approx(_losses(plain), abs=1e-5)
