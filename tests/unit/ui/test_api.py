"""Every UI route on a real server: status codes, auth, and clear 4xx JSON on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.unit.ui.conftest import KEY, PROMPTS, loss_rows
from tunesmith.data.preference_formats import read_preference_source
from tunesmith.errors import RunError
from tunesmith.serve.app import ServeSettings
from tunesmith.serve.server import ServerThread
from tunesmith.ui.app import create_ui_app
from tunesmith.ui.catalog import read_metrics_from, resolve_run
from tunesmith.ui.cli import run_ui


@pytest.fixture(scope="module")
def server(runs_env):
    app = create_ui_app(runs_env.root, ServeSettings(api_keys=(KEY,)), recipes=None)
    with ServerThread(app, api_keys=(KEY,)) as srv:
        yield srv


class Client(requests.Session):
    """requests with a base URL (and the key, when given)."""

    def __init__(self, url: str, key: str | None = None) -> None:
        super().__init__()
        self.url = url
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def request(self, method, path, *args, **kwargs):
        kwargs.setdefault("timeout", 60)
        return super().request(method, self.url + path, *args, **kwargs)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, KEY) as c:
        yield c


def _error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def test_the_page_and_static_files_are_public_and_every_data_route_needs_the_key(server):
    with Client(server.url) as anon:
        assert anon.get("/ui").status_code == 200 and "tunesmith" in anon.get("/ui").text
        assert anon.get("/ui/static/chart.js").status_code == 200
        assert anon.get("/", allow_redirects=False).headers["location"] == "/ui"
        for path in ("/ui/api/runs", "/ui/api/runs/chat", "/ui/api/models", "/ui/api/feedback/pairwise"):
            assert anon.get(path).status_code == 401
        wrong = anon.get("/ui/api/runs", headers={"Authorization": "Bearer wrong"})
        assert _error(wrong, 401) == "Incorrect or missing API key"


def test_runs_table_rows_and_filters(client):
    rows = {r["name"]: r for r in client.get("/ui/api/runs").json()["runs"]}
    assert set(rows) == {"chat", "triage", "live"}
    assert rows["triage"]["key_metric"] == {
        "name": "f1_macro",
        "split": "validation",
        "base": 0.3,
        "tuned": 0.6,
    }
    assert rows["chat"]["status"] == "completed" and rows["chat"]["gates_passed"] is True
    assert rows["triage"]["gates_passed"] is False and rows["triage"]["time_s"] == 25.0
    assert rows["live"]["status"] == "new" and rows["live"]["key_metric"] is None
    kinds = client.get("/ui/api/runs", params={"kind": "classification"}).json()["runs"]
    assert [r["name"] for r in kinds] == ["triage"]
    assert [r["name"] for r in client.get("/ui/api/runs", params={"q": "CHA"}).json()["runs"]] == ["chat"]


def test_run_detail_metrics_report_and_predictions(client, runs_env):
    detail = client.get("/ui/api/runs/chat").json()
    assert detail["summary"]["task"] == "generation" and "name: chat" in detail["config"]
    assert detail["checkpoints"] == [{"name": "adapter/ (final)", "path": str(runs_env.chat.adapter)}]
    assert detail["ratings"]["ratings"] == 0
    assert [r["step"] for r in client.get("/ui/api/runs/chat/metrics").json()["rows"]] == [1, 2, 3, 4, 5, 5]
    preds = client.get("/ui/api/runs/chat/predictions").json()["rows"]
    assert [p["input"] for p in preds] == PROMPTS and preds[0]["prediction"] == "answer 0"
    report = client.get("/ui/api/runs/chat/report")
    assert report.headers["content-type"].startswith("text/html") and "tunesmith report — chat" in report.text
    assert "no report.html yet" in _error(client.get("/ui/api/runs/live/report"), 404)
    assert "no tuned predictions" in _error(client.get("/ui/api/runs/live/predictions"), 404)


def test_unknown_or_crafted_run_names_are_refused(client, runs_env):
    assert "no run named 'nope'" in _error(client.get("/ui/api/runs/nope"), 404)
    for name in ("..", "chat/../triage", "", "/etc"):
        with pytest.raises(RunError, match="not a run name"):
            resolve_run(runs_env.root, name)


def test_events_stream_rows_as_they_are_written_then_end(client, runs_env):
    live = runs_env.live
    live.metrics.write_text("".join(json.dumps(r) + "\n" for r in loss_rows(2)))

    def trainer() -> None:  # what the loop does: append rows, then write summary.json at the end
        time.sleep(0.4)
        with open(live.metrics, "a") as fh:
            fh.write(json.dumps(loss_rows(1, start=3)[0]) + '\n{"step": 4, ')  # a half-written line
            fh.flush()
            time.sleep(0.4)
            fh.write('"train_loss": 2.6}\n')
        time.sleep(0.4)
        live.write_summary({"status": "completed"})

    thread = threading.Thread(target=trainer)
    thread.start()
    events = []
    with client.get("/ui/api/runs/live/events", stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    thread.join()
    assert [e.get("step") for e in events] == [1, 2, 3, 4, None] and events[-1] == {"status": "completed"}
    live.summary.unlink()


def test_read_metrics_from_keeps_a_half_written_line_for_later(runs_env, tmp_path):
    run = runs_env.live.__class__(tmp_path)
    run.metrics.write_text('{"step": 1}\n{"step"')
    rows, offset = read_metrics_from(run, 0)
    assert rows == [{"step": 1}] and offset == len('{"step": 1}\n')


def test_compare_side_by_side_with_config_diff(client):
    c = client.get("/ui/api/compare", params=[("runs", "chat"), ("runs", "triage")]).json()
    assert c["runs"] == ["chat", "triage"]
    assert c["per_class_f1"] == [{"positive": 0.7, "negative": 0.1}, {"positive": 0.7, "negative": 0.2}]
    assert c["forgetting"][1] == {"knowledge": {"delta": -0.02}}
    assert c["config_diff"] == {}  # same config but the name, which is never listed
    assert "at least two runs" in _error(client.get("/ui/api/compare", params={"runs": "chat"}), 400)
    assert "no run named" in _error(
        client.get("/ui/api/compare", params=[("runs", "chat"), ("runs", "x")]), 404
    )


def test_playground_models_load_on_first_use(client):
    ids = [m["id"] for m in client.get("/ui/api/models").json()["models"]]
    assert ids == sorted(ids, key=ids.index) and {"chat", "chat@base", "triage", "triage@base"} == set(ids)
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    tuned = client.post("/v1/chat/completions", json={"model": "chat", **ask}).json()
    base = client.post("/v1/chat/completions", json={"model": "chat@base", **ask}).json()
    assert tuned["model"] == "chat" and base["model"] == "chat@base"
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    probs = client.post("/v1/classify", json={"model": "triage", "input": "great"}).json()["data"][0]
    assert set(probs["probabilities"]) == set(["positive", "negative"])
    assert abs(sum(probs["probabilities"].values()) - 1) < 1e-5
    missing = client.post("/v1/chat/completions", json={"model": "live", **ask})
    assert "did not finish" in _error(missing, 400)


def test_pairwise_judgements_become_dpo_pairs(client, runs_env):
    def judge(choice: str) -> requests.Response:
        body = {
            "prompt": "Say red",
            "a": {"model": "chat", "text": "red"},
            "b": {"model": "chat@base", "text": "x"},
        }
        return client.post("/ui/api/feedback/pairwise", json={**body, "choice": choice, "judge": "ann"})

    before = client.get("/ui/api/feedback/pairwise").json()["judged"]
    assert judge("b").json()["judged"] == before + 1
    judge("tie")
    assert "choice" in _error(judge("maybe"), 400)
    pairs = [
        json.loads(line)
        for line in (runs_env.root / ".feedback" / "preferences.jsonl").read_text().splitlines()
    ]
    assert pairs[-1]["chosen"] == "x" and pairs[-1]["rejected"] == "red" and pairs[-1]["judge"] == "ann"
    assert pairs[-1]["models"] == {"chosen": "chat@base", "rejected": "chat"}
    source = read_preference_source(runs_env.root / ".feedback" / "preferences.jsonl", "preference")
    assert source.examples[-1].chosen == [{"role": "assistant", "content": "x"}]


def test_ratings_summary_with_agreement(client):
    for rater, scores in (("ann", [5, 3]), ("bob", [5, 1])):
        for item, score in enumerate(scores):
            r = client.post(
                "/ui/api/feedback/ratings",
                json={"run": "triage", "item": item, "rater": rater, "score": score, "tags": ["terse"]},
            )
    s = r.json()
    assert s["mean"] == 3.5 and s["raters"] == 2 and s["tags"] == {"terse": 4}
    assert s["agreement"] == {"items": 2, "exact": 0.5, "adjacent": 0.5, "mean_abs_diff": 1.0}
    assert client.get("/ui/api/runs/triage").json()["ratings"]["mean"] == 3.5
    bad = client.post("/ui/api/feedback/ratings", json={"run": "triage", "item": 0, "rater": "x", "score": 6})
    assert "score" in _error(bad, 400)
    unknown = client.post(
        "/ui/api/feedback/ratings", json={"run": "nope", "item": 0, "rater": "x", "score": 3}
    )
    assert "no run named" in _error(unknown, 404)


def test_labels_export_the_latest_label_per_text(client, runs_env):
    rows = runs_env.root / "unlabelled.jsonl"
    rows.write_text('{"text": "great"}\n{"text": "awful"}\n')
    assert client.get("/ui/api/data/rows", params={"path": str(rows)}).json()["rows"][1] == {"text": "awful"}
    for text, label in (("great", "negative"), ("awful", "negative"), ("great", "positive")):
        client.post("/ui/api/feedback/labels", json={"text": text, "label": label, "labeller": "ann"})
    exported = client.get("/ui/api/feedback/labels").text.splitlines()
    assert [json.loads(line) for line in exported] == [
        {"text": "great", "label": "positive"},
        {"text": "awful", "label": "negative"},
    ]
    assert "label" in _error(client.post("/ui/api/feedback/labels", json={"text": "x", "labeller": "a"}), 400)
    assert "outside" in _error(client.get("/ui/api/data/rows", params={"path": "/etc/passwd"}), 403)
    assert "no data file" in _error(
        client.get("/ui/api/data/rows", params={"path": str(runs_env.root / "x.jsonl")}), 404
    )


def test_data_inspect_renders_the_findings(client, runs_env):
    bad = runs_env.root / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        "not json\n"
    )
    page = client.get("/ui/api/data/inspect", params={"path": str(bad), "run": "chat"})
    assert page.status_code == 200 and "bad.jsonl:2" in page.text


def test_start_stop_resume_refuse_what_they_cannot_do(client, runs_env, tmp_path):
    assert "no recipe" in _error(client.post("/ui/api/runs", json={"recipe": "missing.yaml"}), 400)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: chat\nmodel:\n  name: {runs_env.base}\n")
    assert "exists" in _error(client.post("/ui/api/runs", json={"recipe": str(recipe)}), 409)
    bad = client.post("/ui/api/runs", json={"recipe": str(recipe), "overrides": ["train.nope=1"]})
    assert "nope" in _error(bad, 400)
    assert "has ended" in _error(client.post("/ui/api/runs/chat/stop"), 409)
    assert "has finished" in _error(client.post("/ui/api/runs/chat/resume"), 409)
    assert "no checkpoint" in _error(client.post("/ui/api/runs/live/resume"), 409)
    assert client.post("/ui/api/runs/live/stop").json() == {"name": "live", "status": "stopping"}
    assert runs_env.live.stop_request.exists()
    assert client.get("/ui/api/runs", params={"status": "stopping"}).json()["runs"][0]["name"] == "live"
    runs_env.live.stop_request.unlink()


def test_cli_refuses_a_public_bind_without_keys(tmp_path):
    import argparse

    from tunesmith.errors import ConfigError

    args = argparse.Namespace(
        runs=str(tmp_path), recipes="recipes", host="0.0.0.0", port=7860, api_key_file=None
    )
    with pytest.raises(ConfigError, match="without authentication"):
        run_ui(args)


def test_runs_the_server_started_are_stopped_with_it(runs_env):
    if runs_env.live.metrics.exists():  # logged long ago: only the process shows it is running
        os.utime(runs_env.live.metrics, (1, 1))
    app = create_ui_app(runs_env.root, recipes=None)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ServerThread(app) as server:
            app.state.ui.runner.procs["live"] = sleeper  # stands in for a training process
            rows = requests.get(server.url + "/ui/api/runs", params={"q": "live"}, timeout=60).json()["runs"]
            assert rows[0]["status"] == "running"
            assert not runs_env.live.stop_request.exists()
        assert runs_env.live.stop_request.exists()  # the loop would checkpoint and end at its next step
    finally:
        sleeper.kill()
        sleeper.wait()
        runs_env.live.stop_request.unlink(missing_ok=True)
