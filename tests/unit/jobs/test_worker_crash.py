"""Crash safety: kill -9 the worker mid-job, start it again, and the job finishes with the same per-step
losses as an uninterrupted job (fp32 on CPU, same seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tunesmith.jobs.store import Store

ROWS = [
    {"messages": [{"role": "user", "content": f"Spell {i}."}, {"role": "assistant", "content": f"n{i} " * 5}]}
    for i in range(16)
]


def _worker(root, once: bool) -> subprocess.Popen:
    # precision auto times a bf16 matmul against fp32 on CPUs with bf16 flags; under load two workers can
    # decide differently, so pin what auto picks (fp32) for exact loss equality.
    env = {**os.environ, "TUNESMITH_CPU_BF16": "slow"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.jobs.worker", "--root", str(root)] + (["--once"] * once), env=env
    )


def _job(store: Store, tiny_model_dir) -> str:
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    fid = store.add_file("t.jsonl", data, "fine-tune")["id"]
    request = {
        "model": tiny_model_dir.name,
        "base_source": str(tiny_model_dir),
        "training_file": fid,
        "seed": 3,
        "metadata": {"tunesmith_max_steps": "8", "tunesmith_save_every": "2"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}},
    }
    return store.add_job(request, {})["id"]


def _losses(store: Store, jid: str) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (store.runs / jid / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]


def test_kill_9_mid_job_then_restart_resumes_to_the_same_losses(tmp_path, tiny_model_dir):
    store = Store(tmp_path)
    reference = _job(store, tiny_model_dir)
    assert _worker(tmp_path, once=True).wait(300) == 0
    assert store.job(reference)["status"] == "succeeded"

    crashed = _job(store, tiny_model_dir)
    worker = _worker(tmp_path, once=False)
    checkpoints = store.runs / crashed / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-000004")) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert store.job(crashed)["status"] == "running"  # found running: the next worker resumes it
    assert _worker(tmp_path, once=True).wait(300) == 0
    assert store.job(crashed)["status"] == "succeeded"
    assert any("resumed" in e["message"] for e in store.events(crashed))
    assert _losses(store, crashed) == _losses(store, reference)
    assert [s for s, _ in _losses(store, crashed)] == list(range(1, 9))


def test_published_checkpoint_is_the_checkpoint_under_peft_names(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from tunesmith.jobs.checkpoints import served_dir

    store = Store(tmp_path)
    jid = _job(store, tiny_model_dir)
    assert _worker(tmp_path, once=True).wait(300) == 0
    run = store.runs / jid
    assert [c["step_number"] for c in store.checkpoints(jid)] == [8, 6]
    saved = load_file(run / "checkpoints" / "step-000006" / "trainable.safetensors")
    served = load_file(served_dir(run, 6) / "adapter" / "adapter_model.safetensors")
    assert sorted(served) == sorted(k.replace(".default.", ".") for k in saved)
    assert all(served[k.replace(".default.", ".")].equal(v) for k, v in saved.items())


def test_a_validation_bug_fails_its_job_instead_of_stopping_the_worker(tmp_path, tiny_model_dir, monkeypatch):
    import tunesmith.jobs.worker as worker

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(worker, "read_source", broken)
    store = Store(tmp_path)
    jid = _job(store, tiny_model_dir)
    worker.work(tmp_path, once=True)  # returns: nothing left to run
    job = store.job(jid)
    assert job["status"] == "failed"
    assert json.loads(job["error"]) == {
        "code": "server_error",
        "message": "internal error: RuntimeError: boom",
        "param": None,
    }
