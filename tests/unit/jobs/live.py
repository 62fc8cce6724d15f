"""The jobs tests' live server (the fine-tuning API on a tiny random base, through ``openai``) and helpers."""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager

import openai

from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.models import load_registry
from tunesmith.serve.server import ServerThread

KEY = "test-key-0123456789abcdef"
FINAL = ("succeeded", "failed", "cancelled")


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client, rows, name="rows.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose="fine-tune")


def wait(client, job_id, until=FINAL, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status}")


@contextmanager
def jobs_server(root, model_dir, **settings):
    """An ``openai`` client on a real uvicorn server (and its worker subprocesses) over ``root``."""
    settings = ServeSettings(api_keys=(KEY,), **settings)
    app = create_app(load_registry([str(model_dir)]), settings, jobs_root=root)
    server = ServerThread(app, api_keys=(KEY,)).start()
    try:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    finally:
        server.stop()
