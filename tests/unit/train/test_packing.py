"""Padding-free packing: layout, no leakage across examples, losses equal to unpacked, exact resume."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.train.test_train_loop import PAD, VOCAB, _cfg, _data, _losses, _run
from tunesmith.infer.batching import collate
from tunesmith.train.batching import collate_packed, iter_batches, pack_rows
from tunesmith.train.losses import causal_lm_loss, full_logits_loss


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 2, 4, 1], capacity=5) == [[0], [3, 4], [1, 2]]
    assert pack_rows([7, 2], capacity=5) == [[0], [1]]  # too long: a row of its own


def test_collate_packed_layout():
    ids = [[10, 11, 12, 13], [20, 21], [30, 31]]
    labels = [[-100, 11, 12, 13], [20, 21], [-100, 31]]
    batch = collate_packed(ids, labels, PAD)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 30, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    # The first label of every example is off the loss: token 30 must not be predicted from token 21.
    assert batch["labels"].tolist() == [[-100, 11, 12, 13], [-100, 21, -100, 31]]
    assert int(batch["attention_mask"].sum()) == 8


def test_collate_packed_tail_padding_is_isolated():
    batch = collate_packed([[5, 6, 7], [8], [9]], [[5, 6, 7], [8], [9]], PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["labels"][1].tolist() == [-100, -100, -100]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def _per_example(loss_fn, model, ids, labels, packed: bool) -> list[float]:
    """Loss sum of each example alone, from one batch where only that example's labels are kept."""
    out = []
    for keep in range(len(ids)):
        masked = [lab if i == keep else [-100] * len(lab) for i, lab in enumerate(labels)]
        batch = (collate_packed if packed else collate)(ids, masked, PAD)
        out.append(float(loss_fn(model, batch)[0]))
    return out


@pytest.mark.parametrize("loss_fn", [causal_lm_loss, full_logits_loss])
def test_packed_losses_equal_unpacked(loss_fn):
    torch.manual_seed(0)
    model = make_tiny_llama(VOCAB).eval()
    data = _data(8, seed=3)
    packed_batch = collate_packed(data.input_ids, data.labels, PAD)
    assert packed_batch["input_ids"].shape[0] < len(data.input_ids)  # several examples share rows
    with torch.no_grad():
        packed = _per_example(loss_fn, model, data.input_ids, data.labels, packed=True)
        unpacked = _per_example(loss_fn, model, data.input_ids, data.labels, packed=False)
        total_p, n_p = loss_fn(model, packed_batch)
        total_u, n_u = loss_fn(model, collate(data.input_ids, data.labels, PAD))
    assert packed == pytest.approx(unpacked, abs=1e-5)
    assert int(n_p) == int(n_u) and float(total_p) == pytest.approx(float(total_u), abs=1e-4)


def test_packing_without_position_ids_would_leak():
    # The guard above can fail: the same packed rows without restarted positions see the previous example.
    model = make_tiny_llama(VOCAB).eval()
    data = _data(8, seed=3)
    batch = collate_packed(data.input_ids, data.labels, PAD)
    leaky = {
        "input_ids": batch["input_ids"],
        "labels": batch["labels"],
        "attention_mask": batch["attention_mask"],
    }
    with torch.no_grad():
        assert abs(float(causal_lm_loss(model, batch)[0]) - float(causal_lm_loss(model, leaky)[0])) > 1e-3


def test_packed_gradients_equal_unpacked():
    data = _data(8, seed=3)
    grads = []
    for make in (collate, collate_packed):
        model = make_tiny_llama(VOCAB)
        loss, _ = causal_lm_loss(model, make(data.input_ids, data.labels, PAD))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_packed_epoch_is_pure_function_of_seed_and_epoch():
    data = _data(24)
    a = [b["input_ids"] for b in iter_batches(data, 4, PAD, 0, 1, packing=True)]
    b = [b["input_ids"] for b in iter_batches(data, 4, PAD, 0, 1, 2, packing=True)]
    assert all(torch.equal(x, y) for x, y in zip(a[2:], b, strict=True))


def test_packed_training_matches_unpacked(tmp_path):
    _, _, plain = _run(tmp_path, "plain", _cfg(group_by_length=False))
    _, _, packed = _run(tmp_path, "packed", _cfg(group_by_length=False, packing=True))
    assert _losses(packed) == pytest.approx(_losses(plain), abs=1e-5)


def test_resume_with_packing_equals_uninterrupted(tmp_path):
    cfg = _cfg(max_steps=8, save_every=100, packing=True, group_by_length=False)
    _, _, full_dir = _run(tmp_path, "full", cfg)

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    _, res, run_dir = _run(tmp_path, "cut", cfg, on_step=stop_at_3)
    assert res.interrupted and res.steps == 3
    _, res2, _ = _run(tmp_path, "cut", cfg, resume=True)
    assert res2.steps == 8
    assert _losses(run_dir) == pytest.approx(_losses(full_dir), abs=1e-6)
