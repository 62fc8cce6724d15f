"""The loop on a tiny random model: exact losses, accumulation equivalence, exact resume, Ctrl-C,
early stop."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.reference import EXACT, reference_losses
from tunesmith.config import FreezeMethod, FullMethod, LoraMethod, TrainConfig
from tunesmith.methods import count_parameters, prepare_model
from tunesmith.runs import RunDir
from tunesmith.train.loop import TokenData, train_loop

VOCAB = 128
PAD = 2


def _data(n: int = 24, seed: int = 0) -> TokenData:
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for _ in range(n):
        length = int(torch.randint(6, 14, (1,), generator=g))
        row = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        ids.append(row)
        labels.append([-100] * 3 + row[3:])  # prompt of 3 tokens outside the loss
    return TokenData(ids, labels)


def _cfg(**kw) -> TrainConfig:
    # fp32 pinned: `auto` is bf16 on AVX512-BF16/AMX CPUs, and these tests compare exact fp32 numbers.
    base = dict(
        max_steps=6, batch_size=4, lr=1e-2, scheduler="linear", warmup_steps=1, log_every=1, precision="fp32"
    )
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def _run(tmp_path, name, cfg, method=None, **kw):
    model = prepare_model(make_tiny_llama(VOCAB), method or FullMethod())
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    res = train_loop(model, _data(), _data(8, seed=1), cfg, seed=0, run_dir=run_dir, pad_id=PAD, **kw)
    return model, res, run_dir


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"scheduler": "cosine", "warmup_steps": 2, "weight_decay": 0.1},
        {"grad_accum": 2, "max_grad_norm": None},
    ],
    ids=["linear", "cosine-wd", "accum-noclip"],
)
def test_exact_losses_match_a_plain_pytorch_reference(tmp_path, overrides):
    cfg = _cfg(**overrides)
    _, res, run_dir = _run(tmp_path, "a", cfg)
    losses = _losses(run_dir)
    assert len(losses) == 6
    # A random-init model predicts ~uniformly: the first loss is near ln(vocab) = 4.852.
    assert losses[0] == pytest.approx(4.852, abs=0.1)
    # Same tiny model (seed 0), same batches, stock AdamW and the schedule's formula, computed here.
    expected = reference_losses(make_tiny_llama(VOCAB), _data(), cfg, seed=0, pad_id=PAD, steps=6)
    assert losses == pytest.approx(expected, abs=EXACT)
    assert res.steps == 6 and res.final_val_loss is not None


def test_grad_accum_matches_big_batch(tmp_path):
    # Without length grouping, two micro-batches of 4 hold exactly the examples of one batch of 8.
    _, _, a = _run(tmp_path, "big", _cfg(batch_size=8, max_steps=3, group_by_length=False))
    _, _, b = _run(tmp_path, "acc", _cfg(batch_size=4, grad_accum=2, max_steps=3, group_by_length=False))
    # Same examples per step only when the per-epoch order splits evenly; compare the first step.
    assert _losses(a) == pytest.approx(_losses(b), abs=1e-5)


def test_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg(max_steps=8, save_every=100)
    _, _, full_dir = _run(tmp_path, "full", cfg)

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    _, res, run_dir = _run(tmp_path, "cut", cfg, on_step=stop_at_3)
    assert res.interrupted and res.steps == 3
    assert (run_dir / "checkpoints" / "step-000003" / "trainable.safetensors").exists()
    _, res2, _ = _run(tmp_path, "cut", cfg, resume=True)
    assert res2.steps == 8
    assert _losses(run_dir) == pytest.approx(_losses(full_dir), abs=1e-6)


def test_resume_keeps_the_precision_auto_picked_at_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(max_steps=6, save_every=100, precision="auto")
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "slow")  # auto -> fp32 at the start
    _, _, full_dir = _run(tmp_path, "full", cfg)

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    _, _, run_dir = _run(tmp_path, "cut", cfg, on_step=stop_at_2)
    # The probe now says bf16 (a busy machine timing it, or another CPU): the resumed run must not follow.
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "fast")
    _run(tmp_path, "cut", cfg, resume=True)
    assert _losses(run_dir) == pytest.approx(_losses(full_dir), abs=1e-6)
    state = json.loads((run_dir / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["train_state"]["precision"] == "no"


def test_a_stop_file_ends_the_run_between_steps_and_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg(max_steps=8, save_every=100)
    _, _, full_dir = _run(tmp_path, "full", cfg)
    stop = RunDir(tmp_path / "cut").stop_request

    def ask_at_3(step, loss):  # another process's request, as the jobs worker's pause writes it
        if step == 3:
            stop.touch()

    _, res, run_dir = _run(tmp_path, "cut", cfg, on_step=ask_at_3)
    assert res.interrupted and res.steps == 3
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == ["step-000003"]
    stop.unlink()
    _, res2, _ = _run(tmp_path, "cut", cfg, resume=True)
    assert res2.steps == 8 and not res2.interrupted
    assert _losses(run_dir) == _losses(full_dir)  # fp32, same order of operations: bit-equal


def test_resume_with_lora_dropout(tmp_path):
    cfg = _cfg(max_steps=5, batch_size=8)
    method = LoraMethod(r=4, alpha=8, dropout=0.1)
    _, _, full_dir = _run(tmp_path, "full", cfg, method)

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    _run(tmp_path, "cut", cfg, method, on_step=stop_at_2)
    _run(tmp_path, "cut", cfg, method, resume=True)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(full_dir), abs=1e-6)


def test_keep_last_prunes(tmp_path):
    _, _, run_dir = _run(tmp_path, "k", _cfg(max_steps=6, save_every=1, keep_last=2))
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert names == ["step-000005", "step-000006"]


def test_early_stopping_restores_best(tmp_path):
    # A huge learning rate makes validation loss rise after the first evaluations.
    cfg = _cfg(
        max_steps=30,
        lr=0.5,
        scheduler="constant",
        warmup_steps=0,
        eval_every=1,
        early_stopping={"patience": 2},
    )
    model, res, _ = _run(tmp_path, "es", cfg)
    assert res.stopped_early and res.steps < 30
    assert res.restored_best and res.best_step < res.steps
    from tunesmith.train.loop import evaluate_loss

    assert evaluate_loss(model, _data(8, seed=1), 4, PAD, "cpu") == pytest.approx(res.best_val_loss, abs=1e-5)


def test_freeze_trains_only_last_block_and_head(tmp_path):
    model = make_tiny_llama(VOCAB)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = prepare_model(model, FreezeMethod(train_last_n_blocks=1, train_head=False, train_norm=False))
    train_loop(model, _data(), None, _cfg(max_steps=2), seed=0, run_dir=tmp_path, pad_id=PAD)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.startswith("model.layers.1."), name


def test_lora_trains_only_adapters(tmp_path):
    model = prepare_model(make_tiny_llama(VOCAB), LoraMethod(r=4, alpha=8))
    trainable, _ = count_parameters(model)
    # 2 layers x 7 linear layers; each LoRA pair is r*(in+out).
    dims = {
        "q_proj": (64, 64),
        "k_proj": (64, 32),
        "v_proj": (64, 32),
        "o_proj": (64, 64),
        "gate_proj": (64, 128),
        "up_proj": (64, 128),
        "down_proj": (128, 64),
    }
    assert trainable == 2 * sum(4 * (i + o) for i, o in dims.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # lora_B starts at zero, so lora_A receives gradient only from the second step on.
    train_loop(model, _data(), None, _cfg(max_steps=3, warmup_steps=0), seed=0, run_dir=tmp_path, pad_id=PAD)
    for name, param in model.named_parameters():
        assert (not torch.equal(param, before[name])) == ("lora_B" in name or "lora_A" in name), name


def test_length_grouping_cuts_padding_and_keeps_every_example():
    from tunesmith.train.batching import length_grouped_batches

    lengths = [5, 50] * 64
    grouped = length_grouped_batches(lengths, 8, seed=0, epoch=0, group=True)
    plain = length_grouped_batches(lengths, 8, seed=0, epoch=0, group=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(128))

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) == sum(lengths)  # two lengths, windows of 256 > 128 examples: no padding at all
    assert padded(plain) > 1.5 * sum(lengths)
    assert grouped == length_grouped_batches(lengths, 8, seed=0, epoch=0, group=True)
    assert grouped != length_grouped_batches(lengths, 8, seed=0, epoch=1, group=True)


def test_keep_best_by_a_score_finishes_on_that_evaluations_weights(tmp_path):
    # Scripted validation scores: the loss keeps falling (loss-best = last step) while macro-F1 peaks at
    # step 2, so only selection by the score restores step 2's weights. Each call snapshots the weights.
    f1s, snapshots = [0.1, 0.5, 0.3, 0.2], []

    def val_metrics(model, batch_size):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        k = len(snapshots) - 1
        return {"val_loss": 3.0 - k, "val_macro_f1": f1s[k], "val_accuracy": 0.5}

    cfg = _cfg(max_steps=4, eval_every=1, best_metric="macro_f1", keep_best=True)
    model, res, run_dir = _run(tmp_path, "kb", cfg, val_metrics=val_metrics)
    assert (res.best_step, res.best_score, res.best_val_loss) == (2, 0.5, 2.0) and res.restored_best
    assert all(torch.equal(p, snapshots[1][n]) for n, p in model.named_parameters())
    assert not torch.equal(snapshots[1]["model.norm.weight"], snapshots[3]["model.norm.weight"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_macro_f1"] for r in rows if "val_macro_f1" in r] == f1s


def test_keep_best_by_loss_without_early_stopping(tmp_path):
    cfg = _cfg(max_steps=30, lr=0.5, scheduler="constant", warmup_steps=0, eval_every=1, keep_best=True)
    model, res, _ = _run(tmp_path, "kbl", cfg)
    assert res.steps == 30 and not res.stopped_early and res.restored_best and res.best_step < 30
    from tunesmith.train.loop import evaluate_loss

    assert evaluate_loss(model, _data(8, seed=1), 4, PAD, "cpu") == pytest.approx(res.best_val_loss, abs=1e-5)
    assert res.best_score == res.best_val_loss  # for val_loss the reported value is the loss itself


def test_a_score_to_pick_by_needs_scores(tmp_path):
    from tunesmith.errors import RunError

    with pytest.raises(RunError, match=r"train\.best_metric: macro_f1 needs a classification head"):
        _run(tmp_path, "nb", _cfg(best_metric="macro_f1"))


def _lora_b_max_after_one_step(tmp_path, name: str, ratio: float | None) -> float:
    from tunesmith.methods import optimizer_for

    method = LoraMethod(r=4, loraplus_lr_ratio=ratio)
    cfg = _cfg(max_steps=1, lr=1e-3, scheduler="constant", warmup_steps=0, max_grad_norm=None)
    model = prepare_model(make_tiny_llama(VOCAB), method)
    run_dir = tmp_path / name
    opt = optimizer_for(method)  # None for plain LoRA: the loop's own AdamW
    train_loop(model, _data(), None, cfg, seed=0, run_dir=run_dir, pad_id=PAD, make_optimizer=opt)
    return max(float(p.detach().abs().max()) for n, p in model.named_parameters() if "lora_B" in n)


def test_loraplus_moves_the_b_matrices_ratio_times_further(tmp_path):
    # B starts at zero and Adam's first step moves each weight by lr x sign(gradient): the largest |B| after
    # one step is the B matrices' learning rate itself.
    assert _lora_b_max_after_one_step(tmp_path, "plain", None) == pytest.approx(1e-3, rel=1e-3)
    assert _lora_b_max_after_one_step(tmp_path, "plus", 16.0) == pytest.approx(16e-3, rel=1e-3)


def test_mmap_threshold_is_pinned_unless_the_user_set_it(monkeypatch):
    import platform

    from tunesmith.train import monitor

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(monitor.ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(monitor.sys, "platform", "linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert monitor.fix_mmap_threshold() and calls == [(-3, 128 * 1024)]
    assert monitor.fix_mmap_threshold("fast") and calls[-1] == (-3, 1024 * 1024)
    del calls[1:]
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own setting wins
    assert not monitor.fix_mmap_threshold() and len(calls) == 1
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # musl, macOS: nothing to pin
    assert not monitor.fix_mmap_threshold() and len(calls) == 1


@pytest.mark.parametrize("mode", ["lean", "fast"])
def test_the_loop_sets_the_threshold_of_the_configured_memory_mode(tmp_path, monkeypatch, mode):
    from tunesmith.train import loop

    modes: list[str] = []
    monkeypatch.setattr(loop, "fix_mmap_threshold", lambda m: modes.append(m) or True)
    _run(tmp_path, mode, _cfg(max_steps=1, memory_mode=mode))
    assert modes == [mode]
