"""Memory-saving training paths that must not change a number: the fused gated MLP and the frozen head's
cross-entropy (its gradient computed in the forward)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import make_tiny_llama
from tunesmith.config import FullMethod, LoraMethod
from tunesmith.infer.loss import TRAIN_CHUNK_POSITIONS, causal_lm_loss, full_logits_loss
from tunesmith.methods import prepare_model
from tunesmith.models.anatomy import transformer_blocks
from tunesmith.models.fused import fuse_gated_mlps, is_fused
from tunesmith.models.memory import saved_activation_bytes

VOCAB = 300


def _lora_model(method=None):
    torch.manual_seed(0)
    model = prepare_model(make_tiny_llama(VOCAB), method or LoraMethod(r=4, alpha=8)).train()
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero: the adapter's gradients reach every LoRA matrix
            torch.nn.init.normal_(param, std=0.05)
    return model


def _batch(rows=3, width=40, targets_from=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (rows, width), generator=g)
    labels = ids.clone()
    labels[:, :targets_from] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _loss_and_grads(model, batch, loss_fn=causal_lm_loss):
    model.zero_grad()
    loss, units = loss_fn(model, batch)
    (loss / units).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", [LoraMethod(r=4, alpha=8), FullMethod()], ids=["lora", "full"])
def test_fused_gated_mlp_gives_bitwise_the_same_loss_and_gradients_and_keeps_less(method):
    plain = _lora_model(method)
    fused = copy.deepcopy(plain)
    assert fuse_gated_mlps(fused) == 2 and fuse_gated_mlps(fused) == 2  # both blocks; idempotent
    base = fused.get_base_model() if hasattr(fused, "get_base_model") else fused
    assert all(is_fused(block.mlp) for block in transformer_blocks(base))
    batch = _batch()
    want_loss, want_grads = _loss_and_grads(plain, batch)
    loss, grads = _loss_and_grads(fused, batch)
    assert torch.equal(loss, want_loss)
    assert all(torch.equal(grads[name], grad) for name, grad in want_grads.items())
    saved_plain = saved_activation_bytes(plain, causal_lm_loss, batch)
    saved_fused = saved_activation_bytes(fused, causal_lm_loss, batch)
    tokens, intermediate, layers = batch["input_ids"].numel(), 128, 2
    assert saved_plain - saved_fused == tokens * intermediate * layers * 4  # one fp32 tensor per layer


def test_frozen_head_loss_equals_autograds_through_the_full_logits():
    model = _lora_model()
    # more target positions than one chunk, so the chunk loop runs more than once
    batch = _batch(rows=4, width=TRAIN_CHUNK_POSITIONS // 2 + 9)
    want_loss, want_grads = _loss_and_grads(model, batch, full_logits_loss)
    loss, grads = _loss_and_grads(model, batch)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)  # summed chunk by chunk
    for name, grad in want_grads.items():  # the backward's matmul moved: float rounding only
        scale = float(grad.abs().max())
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6 * scale)


def test_frozen_head_keeps_no_vocabulary_row_per_target():
    model, batch = _lora_model(), _batch()
    targets = int((batch["labels"][:, 1:] != -100).sum())
    frozen = saved_activation_bytes(model, causal_lm_loss, batch)
    model.get_output_embeddings().weight.requires_grad_(True)  # a head that trains: the chunked autograd path
    training_head = saved_activation_bytes(model, causal_lm_loss, batch)
    # the training head keeps its fp32 log-probs (a vocabulary row per target) and its input on top
    assert training_head - frozen > targets * VOCAB * 4
