"""The fine-tuning API on the real default model, driven only through the official ``openai`` client:
upload a few GSM8K chat rows, a supervised job of 3 steps on ``default``, events with metrics, checkpoints,
chat with the ``ft:`` model and a checkpoint, delete the file. About a minute on a 2-core CPU."""

from __future__ import annotations

import io
import itertools

import openai
import pytest

from tests.conftest import DATASETS
from tests.unit.jobs.live import KEY, wait
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.models import load_registry
from tunesmith.serve.server import ServerThread

pytestmark = pytest.mark.integration

GSM8K = DATASETS / "openai-format" / "gsm8k-chat"
STEPS = 3


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    registry = load_registry(["default"])
    # The GSM8K rows are ~1 KB each; the default 1 MiB body limit would do, the margin costs nothing.
    settings = ServeSettings(api_keys=(KEY,), max_body_bytes=4 << 20)
    server = ServerThread(create_app(registry, settings, tmp_path_factory.mktemp("jobs")), api_keys=(KEY,))
    server.start()
    try:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    finally:
        server.stop()


def _upload(client, split: str, rows: int):
    with (GSM8K / f"{split}.jsonl").open("rb") as fh:
        data = b"".join(itertools.islice(fh, rows))
    return client.files.create(file=(f"gsm8k-{split}.jsonl", io.BytesIO(data)), purpose="fine-tune")


def test_supervised_job_on_default_through_the_sdk(client):
    uploaded, held_out = (_upload(client, split, rows) for split, rows in (("train", 8), ("validation", 1)))
    job = client.fine_tuning.jobs.create(
        model="default",
        training_file=uploaded.id,
        # One validation row: the run's final evaluation answers each one (the slow part on a CPU).
        validation_file=held_out.id,
        suffix="gsm8k",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
        metadata={"tunesmith_max_steps": str(STEPS), "tunesmith_save_every": "2"},
    )
    done = wait(client, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:default:tunesmith:gsm8k:{job.id}" and done.trained_tokens > 0

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e.data for e in events if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics if m["train_loss"] is not None) == list(range(1, STEPS + 1))
    assert all(0 < m["train_loss"] < 20 for m in metrics if m["train_loss"] is not None)
    assert [m["step"] for m in metrics if m["valid_loss"] is not None] == [STEPS]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [STEPS, 2]

    question = [
        {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}
    ]
    for name in (done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        answer = client.chat.completions.create(model=name, messages=question, max_tokens=16, temperature=0)
        assert answer.model == name and answer.choices[0].message.content.strip()

    for file in (uploaded, held_out):
        assert client.files.delete(file.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file.id)
