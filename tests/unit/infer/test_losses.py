"""The fast loss (head on target positions only, chunked) equals the full-logits reference."""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_llama
from tunesmith.config import LoraMethod
from tunesmith.infer import loss as losses
from tunesmith.infer.batching import collate
from tunesmith.methods import prepare_model


def _batch():
    ids = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    labels = [[-100, -100, 7, 8, 9, 10], [-100, 12, 13]]
    return collate(ids, labels, pad_id=2)


@pytest.mark.parametrize("lora", [False, True])
def test_fast_loss_equals_full_logits(lora, monkeypatch):
    model = make_tiny_llama(64)
    if lora:
        model = prepare_model(model, LoraMethod(r=2, alpha=4))
    monkeypatch.setattr(losses, "CHUNK_POSITIONS", 2)  # force several chunks
    fast, n_fast = losses.causal_lm_loss(model, _batch())
    ref, n_ref = losses.full_logits_loss(model, _batch())
    assert int(n_fast) == int(n_ref) == 6  # 4 + 2 target positions after the shift
    assert float(fast) == pytest.approx(float(ref), abs=1e-5)
    fast.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_padding_never_counts():
    model = make_tiny_llama(64)
    solo = collate([[11, 12, 13]], [[-100, 12, 13]], pad_id=2)
    loss_solo, n_solo = losses.causal_lm_loss(model, solo)
    loss_pair, n_pair = losses.causal_lm_loss(model, _batch())
    first, _ = losses.causal_lm_loss(model, collate([[5, 6, 7, 8, 9, 10]], [[-100, -100, 7, 8, 9, 10]], 2))
    assert int(n_pair) == int(n_solo) + 4
    assert float(loss_pair) == pytest.approx(float(first) + float(loss_solo), abs=1e-5)
