"""train.ema_decay: validation, best snapshot, final weights and checkpoints hold the moving average of the
trained weights, computed here by hand from each step's weights; training itself is unchanged."""

from __future__ import annotations

import pydantic
import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.train.test_train_loop import PAD, VOCAB, _cfg, _data, _losses
from tunesmith.config import FullMethod, TrainConfig
from tunesmith.methods import prepare_model
from tunesmith.train.loop import train_loop

DECAY = 0.3  # below the ramp (1 + t) / (10 + t) for t < 3, so both branches of the schedule are exercised


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _train(tmp_path, name, cfg, **kw):
    """A tiny full fine-tune -> (model, weights before training, raw weights after each step, result)."""
    torch.manual_seed(0)
    model = prepare_model(make_tiny_llama(VOCAB), FullMethod())
    start, per_step = _weights(model), []

    def record(step, loss):
        per_step.append(_weights(model))
        if kw.get("stop_at") == step:
            raise KeyboardInterrupt

    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    extra = {k: v for k, v in kw.items() if k != "stop_at"}
    res = train_loop(
        model, _data(), _data(8, seed=1), cfg, seed=0, run_dir=run_dir, pad_id=PAD, on_step=record, **extra
    )
    return model, start, per_step, res


def _expected_average(start, per_step, decay=DECAY):
    """The documented rule: after step t, avg = d avg + (1 - d) weights_t, d = min(decay, (1+t)/(10+t))."""
    average, history = {n: t.clone() for n, t in start.items()}, []
    for t, weights in enumerate(per_step, start=1):
        d = min(decay, (1 + t) / (10 + t))
        average = {n: d * average[n] + (1 - d) * weights[n] for n in average}
        history.append(average)
    return history


def _close(a, b, atol=1e-6) -> bool:
    return all(torch.allclose(a[n], b[n], atol=atol) for n in a)


def test_the_run_ends_on_the_average_and_trains_as_without_it(tmp_path):
    model, start, per_step, _ = _train(tmp_path, "ema", _cfg(max_steps=5, ema_decay=DECAY))
    expected = _expected_average(start, per_step)[-1]
    assert _close(_weights(model), expected)
    assert not _close(_weights(model), per_step[-1], atol=1e-4)  # the average is not the last step
    _, _, plain_steps, _ = _train(tmp_path, "plain", _cfg(max_steps=5))
    assert _losses(tmp_path / "ema") == pytest.approx(_losses(tmp_path / "plain"), abs=1e-6)
    assert _close(per_step[-1], plain_steps[-1])  # averaging never feeds back into training


def test_validation_and_keep_best_see_the_average(tmp_path):
    seen, f1s = [], [0.1, 0.6, 0.3, 0.2]

    def val_metrics(model, batch_size):
        seen.append(_weights(model))
        return {"val_loss": 1.0, "val_macro_f1": f1s[len(seen) - 1], "val_accuracy": 0.5}

    cfg = _cfg(max_steps=4, eval_every=1, ema_decay=DECAY, best_metric="macro_f1", keep_best=True)
    model, start, per_step, res = _train(tmp_path, "kb", cfg, val_metrics=val_metrics)
    history = _expected_average(start, per_step)
    assert all(_close(s, h) for s, h in zip(seen, history, strict=True))
    assert res.best_step == 2 and res.restored_best
    assert _close(_weights(model), history[1])


def test_resume_continues_the_average_exactly(tmp_path):
    cfg = _cfg(max_steps=6, ema_decay=DECAY)
    full, *_ = _train(tmp_path, "full", cfg)
    _, _, _, cut = _train(tmp_path, "cut", cfg, stop_at=3)
    assert cut.interrupted and (tmp_path / "cut/checkpoints/step-000003/ema.safetensors").exists()
    resumed, *_ = _train(tmp_path, "cut", cfg, resume=True)
    assert _close(_weights(resumed), _weights(full))


def test_resuming_a_checkpoint_without_an_average_is_refused(tmp_path):
    from tunesmith.errors import RunError

    _train(tmp_path, "r", _cfg(max_steps=6), stop_at=2)
    with pytest.raises(RunError, match=r"saved without train\.ema_decay"):
        _train(tmp_path, "r", _cfg(max_steps=6, ema_decay=DECAY), resume=True)


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_decay_must_be_inside_zero_one(decay):
    with pytest.raises(pydantic.ValidationError, match="ema_decay"):
        TrainConfig(ema_decay=decay)
