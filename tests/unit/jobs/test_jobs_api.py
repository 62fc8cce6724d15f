"""The fine-tuning API end to end, driven only through the official ``openai`` client.

A real uvicorn server (``create_app(..., jobs_root=...)``) on a free port serving a tiny random Llama base;
its worker subprocess trains a few steps per job.
"""

from __future__ import annotations

import csv
import io
import time

import openai
import pytest

from tests.unit.jobs.live import jsonl, upload, wait
from tunesmith.jobs.mapping import BASE_LR, RequestError, check_request, to_overrides
from tunesmith.jobs.worker import estimated_finish

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": str(2 * i)},
        ]
    }
    for i in range(12)
]


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
    uploaded = client.files.create(file=("sums.jsonl", io.BytesIO(jsonl(ROWS))), purpose="fine-tune")
    assert client.files.retrieve(uploaded.id).bytes == len(jsonl(ROWS))
    assert client.files.content(uploaded.id).read() == jsonl(ROWS)
    job = _create(client, tiny_model_dir, uploaded.id)
    assert job.id.startswith("ftjob-") and job.status == "validating_files"
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    done = wait(client, job.id)
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
    assert "Files validated; job queued" in [e.message for e in events]
    [result_id] = done.result_files
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    table = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    by_step = {m["step"]: m for m in metrics if m["train_loss"] is not None}
    assert [(int(r["step"]), float(r["train_loss"])) for r in table] == [
        (s, by_step[s]["train_loss"]) for s in (1, 2, 3)
    ]
    assert [r["valid_loss"] != "" for r in table] == [False, False, True]
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
    bad = jsonl(ROWS[:3]) + b"{not json\n" + jsonl(ROWS[3:])
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    done = wait(client, _create(client, tiny_model_dir, uploaded.id).id)
    assert done.status == "failed" and done.fine_tuned_model is None
    assert done.error.message.startswith(f"bad.jsonl ({uploaded.id}):4:"), done.error.message
    assert done.error.param == "training_file"


def test_unknown_model_is_400_on_param_model(client):
    uploaded = client.files.create(file=("ok.jsonl", io.BytesIO(jsonl(ROWS))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id)
    assert err.value.param == "model"


def test_cancel_serves_nothing_and_pagination(client, tiny_model_dir):
    uploaded = client.files.create(file=("sums.jsonl", io.BytesIO(jsonl(ROWS))), purpose="fine-tune")
    job = _create(client, tiny_model_dir, uploaded.id, steps=10_000, suffix="never")
    wait(client, job.id, until=("running",))
    behind = _create(client, tiny_model_dir, uploaded.id, suffix="behind")  # validated while job trains
    assert wait(client, behind.id, until=("queued",)).status == "queued"
    assert client.fine_tuning.jobs.cancel(behind.id).status == "cancelled"
    while (running := client.fine_tuning.jobs.retrieve(job.id)).estimated_finish is None:
        time.sleep(0.1)  # null until the first steps are timed
    assert running.estimated_finish >= running.created_at
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    done = wait(client, job.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=f"ft:{tiny_model_dir.name}:tunesmith:never:{job.id}",
            messages=[{"role": "user", "content": "hi"}],
        )
    queued = _create(client, tiny_model_dir, uploaded.id, suffix="queued")  # cancelled before it starts
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    all_ids = [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    assert all_ids[:3] == [queued.id, behind.id, job.id]  # newest first
    first = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == all_ids[:1] and first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(after=all_ids[0], limit=100).data] == all_ids[1:]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=100)] == all_ids  # the SDK's auto-paging


def test_list_filters_on_metadata(client, tiny_model_dir):
    uploaded = upload(client, ROWS)
    tagged = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name, training_file=uploaded.id, metadata={"team": "search", "run": "a"}
    )
    client.fine_tuning.jobs.cancel(tagged.id)
    other = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name, training_file=uploaded.id, metadata={"team": "ads"}
    )
    client.fine_tuning.jobs.cancel(other.id)
    bare = client.fine_tuning.jobs.create(model=tiny_model_dir.name, training_file=uploaded.id)
    client.fine_tuning.jobs.cancel(bare.id)
    listed = client.fine_tuning.jobs.list
    assert [j.id for j in listed(metadata={"team": "search"})] == [tagged.id]
    assert [j.id for j in listed(metadata={"team": "search", "run": "b"})] == []
    assert [j.id for j in listed(metadata={"team": "ads"})] == [other.id]
    ids = {j.id for j in listed(limit=100)}
    assert {tagged.id, other.id, bare.id} <= ids


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
    with pytest.raises(RequestError, match=r"method\.type must be one of supervised, dpo, reinforcement"):
        check_request({"model": "default", "method": {"type": "rlhf"}})


def test_estimated_finish_is_the_recent_step_time_times_the_steps_left():
    rows = [{"step": s, "step_s": 9.0 if s == 1 else 1.0, "total_steps": 20} for s in range(1, 8)]
    rows.append({"step": 7, "val_loss": 1.0})  # an evaluation row has no step time
    assert estimated_finish(rows, now=1000.0) == 1000 + 13  # steps 3-7 averaged 1 s; 13 left
    assert estimated_finish([{"step": 1, "val_loss": 2.0}], now=1000.0) is None
