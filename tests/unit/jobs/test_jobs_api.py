"""The fine-tuning API end to end, driven only through the official ``openai`` client.

A real uvicorn server (``create_app(..., jobs_root=...)``) on a free port serving a tiny random Llama base;
its worker subprocess trains a few steps per job.
"""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tunesmith.jobs.mapping import BASE_LR, to_overrides
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.models import load_registry
from tunesmith.serve.server import ServerThread

KEY = "test-key-0123456789abcdef"
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": str(2 * i)},
        ]
    }
    for i in range(12)
]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("jobs")
    app = create_app(load_registry([str(tiny_model_dir)]), ServeSettings(api_keys=(KEY,)), jobs_root=root)
    server = ServerThread(app, api_keys=(KEY,)).start()
    try:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    finally:
        server.stop()


def _wait(client, job_id, until=("succeeded", "failed", "cancelled"), timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status}")


def _create(client, tiny_model_dir, file_id, steps=3, suffix="sums"):
    return client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=file_id,
        suffix=suffix,
        seed=7,
        metadata={"tunesmith_max_steps": str(steps), "tunesmith_save_every": "2"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )


def test_supervised_job_end_to_end(client, tiny_model_dir):
    uploaded = client.files.create(file=("sums.jsonl", io.BytesIO(_jsonl(ROWS))), purpose="fine-tune")
    assert client.files.retrieve(uploaded.id).bytes == len(_jsonl(ROWS))
    assert client.files.content(uploaded.id).read() == _jsonl(ROWS)
    job = _create(client, tiny_model_dir, uploaded.id)
    assert job.id.startswith("ftjob-") and job.status == "validating_files"
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{tiny_model_dir.name}:tunesmith:sums:{job.id}"
    assert done.trained_tokens > 0
    events = client.fine_tuning.jobs.list_events(job.id, limit=50).data
    metrics = [e.data for e in events if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics if m["train_loss"] is not None) == [1, 2, 3]
    assert [m["step"] for m in metrics if m["valid_loss"] is not None] == [3]  # the final evaluation
    final, early = client.fine_tuning.jobs.checkpoints.list(job.id).data  # newest first
    assert (early.step_number, final.step_number) == (2, 3)
    assert final.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-3"
    assert early.metrics.train_loss == next(m["train_loss"] for m in metrics if m["step"] == 2)
    question = [{"role": "user", "content": "What is 2 + 2?"}]
    for name in (done.fine_tuned_model, early.fine_tuned_model_checkpoint, tiny_model_dir.name):
        answer = client.chat.completions.create(model=name, messages=question, max_tokens=4, temperature=0)
        assert answer.model == name
    served = {m.id for m in client.models.list()}
    assert {done.fine_tuned_model, early.fine_tuned_model_checkpoint} <= served  # hot-loaded, no restart
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_malformed_file_fails_the_job_naming_the_line(client, tiny_model_dir):
    bad = _jsonl(ROWS[:3]) + b"{not json\n" + _jsonl(ROWS[3:])
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    done = _wait(client, _create(client, tiny_model_dir, uploaded.id).id)
    assert done.status == "failed" and done.fine_tuned_model is None
    assert ":4" in done.error.message or "line 4" in done.error.message, done.error.message


def test_unknown_model_is_400_on_param_model(client):
    uploaded = client.files.create(file=("ok.jsonl", io.BytesIO(_jsonl(ROWS))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id)
    assert err.value.param == "model"


def test_cancel_serves_nothing_and_pagination(client, tiny_model_dir):
    uploaded = client.files.create(file=("sums.jsonl", io.BytesIO(_jsonl(ROWS))), purpose="fine-tune")
    job = _create(client, tiny_model_dir, uploaded.id, steps=10_000, suffix="never")
    _wait(client, job.id, until=("running",))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    done = _wait(client, job.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=f"ft:{tiny_model_dir.name}:tunesmith:never:{job.id}",
            messages=[{"role": "user", "content": "hi"}],
        )
    queued = _create(client, tiny_model_dir, uploaded.id, suffix="queued")  # cancelled before it starts
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    all_ids = [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    assert all_ids[:2] == [queued.id, job.id]  # newest first
    first = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == all_ids[:1] and first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(after=all_ids[0], limit=100).data] == all_ids[1:]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=100)] == all_ids  # the SDK's auto-paging


def test_mapping_scales_the_base_lr_and_refuses_unmapped_methods():
    request = {
        "model": "default",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"learning_rate_multiplier": 0.5, "n_epochs": "auto"}},
        },
    }
    overrides = to_overrides(request, "t.jsonl", None, "ftjob-x", "runs")
    assert f"train.lr={BASE_LR * 0.5}" in overrides and "train.epochs=3.0" in overrides
    with pytest.raises(Exception, match="method `dpo` is not mapped"):
        to_overrides({"model": "default", "method": {"type": "dpo"}}, "t.jsonl", None, "j", "runs")
