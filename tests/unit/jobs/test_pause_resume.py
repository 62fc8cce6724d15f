"""Pause and resume through the ``openai`` client: a job paused mid-run and resumed ends with the same
per-step losses as an uninterrupted job (fp32 on CPU, same seed)."""

from __future__ import annotations

import csv
import io
import time

import openai
import pytest

from tests.unit.jobs.live import jobs_server, upload, wait

ROWS = [
    {"messages": [{"role": "user", "content": f"Spell {i}."}, {"role": "assistant", "content": f"n{i} " * 5}]}
    for i in range(16)
]
# ~5 s at the ~60 steps/s of a 2-core CI CPU. With 30 steps (0.5 s) a job could finish between its first
# metrics event and the worker's next poll of the pause flag (every 0.2 s); 300 leave margin on a machine
# several times faster.
STEPS = 300


@pytest.fixture
def client(tmp_path, tiny_model_dir, monkeypatch):
    # The worker inherits this: precision auto would time bf16 against fp32, and two jobs under load could
    # decide differently; pin what auto picks (fp32) for exact loss equality.
    monkeypatch.setenv("TUNESMITH_CPU_BF16", "slow")
    with jobs_server(tmp_path, tiny_model_dir) as c:
        yield c


def _create(client, model, file_id):
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=file_id,
        seed=3,
        # No periodic checkpoint: resume can only continue from the one the pause writes.
        metadata={"tunesmith_max_steps": str(STEPS), "tunesmith_save_every": "1000"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}},
    )


def _losses(client, job) -> list[tuple[str, str, str]]:
    """The result file's rows, as written (float reprs compare exactly)."""
    text = client.files.content(job.result_files[0]).text
    return [(r["step"], r["train_loss"], r["valid_loss"]) for r in csv.DictReader(io.StringIO(text))]


def test_pause_mid_job_then_resume_gives_the_uninterrupted_losses(client, tiny_model_dir):
    uploaded = upload(client, ROWS)
    reference = wait(client, _create(client, tiny_model_dir.name, uploaded.id).id)
    assert reference.status == "succeeded", reference.error

    job = _create(client, tiny_model_dir.name, uploaded.id)
    with pytest.raises(openai.BadRequestError, match="not paused"):
        client.fine_tuning.jobs.resume(job.id)
    wait(client, job.id, until=("running",))
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=100)):
        time.sleep(0.05)  # mid-job: at least one step done
    assert client.fine_tuning.jobs.pause(job.id).id == job.id
    paused = wait(client, job.id, until=("paused", "succeeded"))
    assert paused.status == "paused" and paused.fine_tuned_model is None
    [note] = [
        e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "paused at" in e.message
    ]
    at = int(note.rsplit(" ", 1)[1])
    assert 1 <= at < STEPS
    with pytest.raises(openai.BadRequestError, match="only a queued or running job pauses"):
        client.fine_tuning.jobs.pause(job.id)

    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert "Fine-tuning job resumed" in messages
    assert _losses(client, done) == _losses(client, reference)
    assert done.trained_tokens == reference.trained_tokens  # both segments counted
    assert [int(s) for s, _, _ in _losses(client, done)] == list(range(1, STEPS + 1))
