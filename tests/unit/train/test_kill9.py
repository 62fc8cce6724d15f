"""Crash safety of training: kill -9 at chosen moments, ``--resume``, and the run is the uninterrupted one.

The subprocess tests start ``tunesmith train`` on a tiny model, SIGKILL it where a test-only fault point
(:mod:`tunesmith.faults`) pauses it — mid-step, mid-validation, between the files of a checkpoint save,
before and after its rename — then resume, again and again; the per-step losses in metrics.jsonl (each step
exactly once) and the final adapter must equal an uninterrupted run's at 1e-6 (fp32). The fast variant
(3 kills) runs in ``make test``; the sweep over every point and every run kind (lm, staged, dpo, grpo; plus
kills at random moments) is ``make chaos``. The in-process tests cover a torn checkpoint on disk (skipped
with a warning, the previous one used) and a disk that is full or read-only mid-save.
"""

from __future__ import annotations

import errno
import functools
import json
import random

import pytest
from safetensors import SafetensorError
from safetensors.torch import save_file as real_save_file

from tests.unit.train import kill9
from tests.unit.train.test_train_loop import _cfg, _losses, _run
from tunesmith.errors import RunError
from tunesmith.faults import fault_point
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.monitor import MetricsLog


def _reference(tmp_path, model_dir, make_config) -> kill9.Trainer:
    ref = kill9.Trainer(tmp_path / "ref", make_config(_mkdir(tmp_path / "ref"), model_dir, "run"))
    ref.run_in_process()
    return ref


def _crashed(tmp_path, model_dir, make_config) -> kill9.Trainer:
    return kill9.Trainer(tmp_path / "cut", make_config(_mkdir(tmp_path / "cut"), model_dir, "run"))


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_kill_9_mid_save_and_mid_eval_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    ref = _reference(tmp_path, tiny_model_dir, kill9.lm_config)
    run = _crashed(tmp_path, tiny_model_dir, kill9.lm_config)
    run.kill_at("checkpoint.after_optimizer@2")  # inside the save of step 4: a temp dir with 2 of 4 files
    assert [p.name for p in (run.run_dir / "checkpoints").glob("step-*")] == ["step-000002"]
    run.kill_at("eval.batch@1")  # resumed from step 2, killed inside step 3's validation pass
    run.finish()
    assert kill9.assert_same_run(run.run_dir, ref.run_dir) == 6 + 2  # 6 steps, 2 validation passes
    assert not list((run.run_dir / "checkpoints").glob(".step-*"))  # no temp dir left behind


def test_a_fault_point_returns_at_once_when_unset_or_not_named(monkeypatch):
    monkeypatch.delenv("TUNESMITH_FAULT", raising=False)
    fault_point("checkpoint.after_rng")
    monkeypatch.setenv("TUNESMITH_FAULT", "checkpoint.after_state@1")
    fault_point("checkpoint.after_rng")  # another point: no pause (a pause would hang this test)


def _stop_at(stop: int):
    """An ``on_step`` that presses Ctrl-C after step ``stop`` (the loop saves a checkpoint there)."""

    def on_step(step: int, loss: float) -> None:
        if step == stop:
            raise KeyboardInterrupt

    return on_step


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CFG = _cfg(max_steps=6, save_every=2)  # the in-process runs: checkpoints at steps 2, 4, 6


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[float]:
    """Per-step train losses of CFG's run without interruption (computed once for this module)."""
    _, _, run_dir = _run(tmp_path_factory.mktemp("full"), "full", CFG)
    return _losses(run_dir)


def test_a_torn_checkpoint_is_skipped_with_a_warning_and_the_previous_one_resumes(
    tmp_path, capsys, uninterrupted
):
    cfg = CFG.model_copy(update={"keep_last": 3})
    _run(tmp_path, "cut", cfg, on_step=_stop_at(4))
    root = tmp_path / "cut" / "checkpoints"
    assert ckpt.verify_checkpoint(root / "step-000004") is None
    _flip_a_byte(root / "step-000004" / "optimizer.safetensors")  # same size, other bytes
    assert "optimizer.safetensors does not match its sha256" in ckpt.verify_checkpoint(root / "step-000004")
    with pytest.raises(RunError, match=r"step-000004 is damaged: optimizer\.safetensors"):
        ckpt.load_checkpoint(root / "step-000004", None, None, None)
    capsys.readouterr()
    _, res, _ = _run(tmp_path, "cut", cfg, resume=True)
    out = capsys.readouterr()
    assert f"skipping checkpoint {root / 'step-000004'}: optimizer.safetensors does not match" in out.err
    assert "step-000002 (step 2/6)" in out.out
    assert res.steps == 6 and _losses(tmp_path / "cut") == pytest.approx(uninterrupted, abs=1e-6)


def test_a_checkpoint_without_its_manifest_or_with_a_short_file_is_not_picked(tmp_path, capsys):
    _run(tmp_path, "r", _cfg(max_steps=6, save_every=2, keep_last=3))
    root = tmp_path / "r" / "checkpoints"
    (root / "step-000006" / "manifest.json").unlink()  # killed between state.json and the manifest
    trainable = root / "step-000004" / "trainable.safetensors"
    trainable.write_bytes(trainable.read_bytes()[:-10])  # a file the OS never finished flushing
    assert ckpt.latest_checkpoint(root) == root / "step-000002"
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-000006: no manifest.json (the save did not finish)" in err
    assert "step-000004: trainable.safetensors has" in err and "the manifest says" in err


# What each failure looks like from the writer: safetensors reports its own write errors (a full disk) as a
# SafetensorError carrying the OS error's text (measured on a 256 KiB tmpfs); open() raises OSError.
FAILURES = {
    "ENOSPC-safetensors": (
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        "No space left on device (os error 28)",
    ),
    "ENOSPC": (
        OSError(errno.ENOSPC, "No space left on device"),
        f"No space left on device (errno {errno.ENOSPC})",
    ),
    "EACCES": (OSError(errno.EACCES, "Permission denied"), f"Permission denied (errno {errno.EACCES})"),
}


def _failing_save(monkeypatch, error: Exception, on_call: int) -> None:
    """Make the ``on_call``-th tensor file write of the checkpoint module raise ``error``.

    A monkeypatch, not a read-only folder: the tests run as root, where chmod does not stop a write."""
    calls = []

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == on_call:
            raise error
        return real_save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)


@pytest.mark.parametrize("failure", list(FAILURES))
def test_disk_full_or_read_only_mid_save_names_the_path_and_the_run_resumes(
    tmp_path, monkeypatch, failure, uninterrupted
):
    error, words = FAILURES[failure]
    cfg = CFG
    _failing_save(monkeypatch, error, on_call=3 + 2)  # 3 files per checkpoint: the 2nd one's optimizer
    with pytest.raises(RunError) as info:
        _run(tmp_path, "cut", cfg)
    root = tmp_path / "cut" / "checkpoints"
    message = str(info.value)
    assert f"could not write checkpoint {root / 'step-000004'}: " in message and words in message
    assert f"make {root} writable, then continue with --resume" in message
    assert [p.name for p in root.iterdir()] == ["step-000002"]  # intact, and no temp dir left
    assert ckpt.verify_checkpoint(root / "step-000002") is None
    monkeypatch.setattr(ckpt, "save_file", real_save_file)  # space is back
    _, res, _ = _run(tmp_path, "cut", cfg, resume=True)
    assert res.steps == 6 and _losses(tmp_path / "cut") == pytest.approx(uninterrupted, abs=1e-6)


def test_retention_keeps_the_older_checkpoint_when_the_new_one_fails_verification(tmp_path, monkeypatch):
    _run(tmp_path, "r", _cfg(max_steps=2, save_every=2, keep_last=1))
    root = tmp_path / "r" / "checkpoints"
    real = ckpt.verify_checkpoint
    monkeypatch.setattr(
        ckpt, "verify_checkpoint", lambda p: "bad read-back" if p.name != "step-000002" else real(p)
    )
    with pytest.raises(RunError, match="step-000004 failed verification right after writing: bad read-back"):
        _run(tmp_path, "r", _cfg(max_steps=4, save_every=2, keep_last=1), resume=True)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000004"]  # none deleted


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, uninterrupted):
    cfg = CFG
    _run(tmp_path, "cut", cfg, on_step=_stop_at(3))
    metrics = tmp_path / "cut" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 4, "train_lo')  # killed mid-append
    _run(tmp_path, "cut", cfg, resume=True)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _losses(tmp_path / "cut") == pytest.approx(uninterrupted, abs=1e-6)


def test_a_metrics_row_that_cannot_be_written_names_the_file(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    (tmp_path / "metrics.jsonl").unlink()
    (tmp_path / "metrics.jsonl").mkdir()  # any OSError on append: here EISDIR
    with pytest.raises(RunError, match=r"could not append to .*metrics\.jsonl: Is a directory \(errno 21\)"):
        log.write({"step": 1, "train_loss": 1.0})


# ---- make chaos: every fault point, every run kind, random moments -------------------------------------

# In kill order: each later point must be reachable from where the earlier kills leave the run
# (6 steps, checkpoints at 2, 4, 6, validation at 3 and 6). The run goes back at most to its last checkpoint.
LM_POINTS = [
    "step.backward@1",  # mid-step 1: nothing on disk yet, the resume starts over
    "step.logged@2",  # step 2's row written, its checkpoint not
    "step.saved@1",  # step-000002 written and verified
    "step.backward@2",  # resumed at 2: mid-step 4, after step 3's validation
    "checkpoint.after_rng@2",  # resumed at 2: step-000004 saved, killed inside the save of step 6
    "eval.batch@1",  # resumed at 4: inside step 6's validation pass
    "eval.logged@1",  # its row written, the step's checkpoint not
    "checkpoint.after_trainable@1",  # then inside the save of step 6, file after file
    "checkpoint.after_optimizer@1",
    "checkpoint.after_rng@1",
    "checkpoint.after_state@1",
    "checkpoint.after_manifest@1",  # complete in the temp dir, not renamed
    "checkpoint.after_rename@1",  # renamed, not yet verified nor pruned; the random kills come after
]


def _sweep(tmp_path, model_dir, make_config, points) -> kill9.Trainer:
    ref = _reference(tmp_path, model_dir, make_config)
    run = _crashed(tmp_path, model_dir, make_config)
    for point in points:
        run.kill_at(point)
    run.finish()
    rows = kill9.assert_same_run(run.run_dir, ref.run_dir)
    print(f"\n{make_config.__name__}: {len(run.log)} kills, {rows} loss rows equal at 1e-6")
    print("\n".join(run.log))
    return run


@pytest.mark.chaos
def test_chaos_lm_every_fault_point(tmp_path, tiny_model_dir):
    run = _sweep(tmp_path, tiny_model_dir, kill9.lm_config, LM_POINTS)
    assert len(run.log) == len(LM_POINTS)


@pytest.mark.chaos
def test_chaos_lm_kills_at_random_moments_of_training(tmp_path, tiny_model_dir):
    # 24 steps; each kill lands a random few ms after a random metrics row (step or validation)
    longer = functools.partial(kill9.lm_config, max_steps=24, save_every=4, eval_every=10)
    longer.__name__ = "lm_config_24_steps"
    ref = _reference(tmp_path, tiny_model_dir, longer)
    run = _crashed(tmp_path, tiny_model_dir, longer)
    chance = random.Random(23)
    for _ in range(5):
        run.kill_after_rows(chance.randint(1, 20), chance.uniform(0.0, 0.05))
    run.finish()
    rows = kill9.assert_same_run(run.run_dir, ref.run_dir)
    print(f"\nrandom moments: {len(run.log)} kills, {rows} loss rows equal at 1e-6")
    print("\n".join(run.log))


@pytest.mark.chaos
def test_chaos_staged_run(tmp_path, tiny_model_dir):
    # stage 1 mid-step 3; stage 2's first save; stage 2's validation; stage 2's last save done
    points = ["step.backward@3", "checkpoint.after_manifest@2", "eval.batch@3", "step.saved@1"]
    _sweep(tmp_path, tiny_model_dir, kill9.staged_config, points)


@pytest.mark.chaos
def test_chaos_dpo_run(tmp_path, tiny_model_dir):
    points = ["step.backward@2", "checkpoint.after_optimizer@1", "eval.batch@1", "checkpoint.after_rename@2"]
    _sweep(tmp_path, tiny_model_dir, kill9.dpo_config, points)


@pytest.mark.chaos
def test_chaos_grpo_run(tmp_path, tiny_model_dir):
    points = ["step.backward@2", "checkpoint.after_trainable@1", "step.logged@3", "checkpoint.after_state@1"]
    _sweep(tmp_path, tiny_model_dir, kill9.grpo_config, points)


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs (root only: skipped where mounting is not allowed), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.chaos
def test_chaos_a_real_full_disk_mid_save_then_space_returns(small_disk, uninterrupted):
    import subprocess

    cfg = CFG.model_copy(update={"keep_last": 1})
    with pytest.raises(RunError) as info:
        _run(small_disk, "cut", cfg)  # ~0.9 MB a checkpoint: the 2nd one fills the disk
    assert "No space left on device (os error 28)" in str(info.value) or "(errno 28)" in str(info.value)
    root = small_disk / "cut" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-000002"] and ckpt.verify_checkpoint(
        root / "step-000002"
    ) is None
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)  # space is back
    _, res, _ = _run(small_disk, "cut", CFG, resume=True)
    assert res.steps == 6 and _losses(small_disk / "cut") == pytest.approx(uninterrupted, abs=1e-6)
    print(f"\nreal ENOSPC: {info.value}")
