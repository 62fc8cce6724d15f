"""``tunesmith jobs create/list/show/events/cancel`` against a live server (the shared tiny-base one)."""

from __future__ import annotations

import json

from tests.unit.jobs.live import KEY, jsonl, wait
from tunesmith.cli import main

ROWS = [
    {"messages": [{"role": "user", "content": f"Echo {i}."}, {"role": "assistant", "content": f"{i}"}]}
    for i in range(8)
]


def _jobs(client, capsys, *argv) -> tuple[int, str, str]:
    code = main(["jobs", "--base-url", str(client.base_url), "--api-key", KEY, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_creates_lists_shows_follows_and_cancels(client, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "echo.jsonl"
    data.write_bytes(jsonl(ROWS))
    model = tiny_model_dir.name
    create = ["create", "--model", model, "--training-file", str(data), "--suffix", "cli", "--n-epochs", "1"]
    create += ["--batch-size", "4", "--metadata", "tunesmith_max_steps=2", "--metadata", "via=cli"]
    code, out, _ = _jobs(client, capsys, *create)
    assert code == 0
    job = json.loads(out)
    assert job["status"] == "validating_files" and job["hyperparameters"]["batch_size"] == 4
    assert client.files.content(job["training_file"]).read() == jsonl(ROWS)  # uploaded first
    done = wait(client, job["id"])
    assert done.status == "succeeded", done.error

    code, out, _ = _jobs(client, capsys, "list", "--metadata", "via=cli")
    assert code == 0 and out.split() == [job["id"], "succeeded", model, done.fine_tuned_model]
    code, out, _ = _jobs(client, capsys, "show", job["id"])
    assert json.loads(out)["fine_tuned_model"] == done.fine_tuned_model
    code, out, _ = _jobs(client, capsys, "events", job["id"])
    lines = out.splitlines()
    assert "Created fine-tuning job" in lines[0] and "successfully completed" in lines[-1]
    assert sum(" step 1: train_loss=" in line for line in lines) == 1

    long = client.fine_tuning.jobs.create(
        model=model, training_file=job["training_file"], metadata={"tunesmith_max_steps": "10000"}
    )
    wait(client, long.id, until=("queued", "running"))
    code, _, _ = _jobs(client, capsys, "pause", long.id)
    assert code == 0 and wait(client, long.id, until=("paused",)).status == "paused"
    code, out, _ = _jobs(client, capsys, "resume", long.id)
    assert code == 0 and out.split()[:2] == [long.id, "queued"]
    _jobs(client, capsys, "pause", long.id)
    wait(client, long.id, until=("paused",))
    code, out, _ = _jobs(client, capsys, "cancel", long.id)  # a paused job cancels too
    assert code == 0 and out.split()[:2] == [long.id, "cancelled"]


def test_cli_reports_the_servers_error(client, capsys, tmp_path):
    code, _, err = _jobs(client, capsys, "create", "--model", "gpt-4o", "--training-file", "file-nope")
    assert (
        code == 2
        and err.startswith("tunesmith: error: Model 'gpt-4o' is not available")
        and "(param: model)" in err
    )
    code, _, err = _jobs(client, capsys, "show", "ftjob-nope")
    assert (
        code == 2
        and err == "tunesmith: error: No fine-tuning job with id ftjob-nope (param: fine_tuning_job_id)\n"
    )
    code = main(["jobs", "--base-url", "http://127.0.0.1:9/v1", "list"])
    assert code == 2 and "cannot reach http://127.0.0.1:9/v1" in capsys.readouterr().err
