"""Start, stop and resume a real (tiny) run from the UI: the `tunesmith train` pipeline in a process of its
own, stopped through the STOP file at a step boundary with a checkpoint, then resumed to the end."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tunesmith.serve.server import ServerThread
from tunesmith.ui.app import create_ui_app

STEPS = 30


def _wait(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_start_stop_resume_a_real_run(tmp_path, tiny_model_dir):
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
        for w in ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model:\n  name: {tiny_model_dir}\ndata:\n  train: {data}\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    overrides = ["name=tiny", f"train.max_steps={STEPS}", "train.batch_size=2", "train.precision=fp32"]
    overrides += ["eval.compare_base=false", "eval.probes=false", "eval.icl_shots=[]"]
    app = create_ui_app(runs, recipes=tmp_path)
    ui = app.state.ui
    with ServerThread(app) as server:
        url = server.url + "/ui/api/runs"
        started = requests.post(url, json={"recipe": "tiny.yaml", "overrides": overrides}, timeout=60)
        assert started.json() == {"name": "tiny", "status": "started"}
        _wait(lambda: (runs / "tiny" / "config.yaml").exists(), "the run directory")
        run = ui.run("tiny")
        _wait(lambda: len(run.read_metrics()) >= 2, "two logged steps")
        assert requests.post(f"{url}/tiny/stop", timeout=60).json()["status"] == "stopping"
        assert ui.runner.procs["tiny"].wait(120) == 130  # interrupted, as Ctrl-C ends `tunesmith train`
        stopped_at = run.read_metrics()[-1]["step"]
        assert stopped_at < STEPS and run.read_summary()["status"] == "interrupted"
        assert requests.get(f"{url}/tiny", timeout=60).json()["checkpoints"]
        assert requests.post(f"{url}/tiny/resume", timeout=60).json() == {"name": "tiny", "status": "resumed"}
        assert ui.runner.procs["tiny"].wait(180) == 0
        steps = [r["step"] for r in run.read_metrics() if "train_loss" in r]
        assert steps == list(range(1, STEPS + 1))  # resumed after the checkpoint: no step twice or missing
        assert requests.get(f"{url}/tiny", timeout=60).json()["row"]["status"] == "completed"
