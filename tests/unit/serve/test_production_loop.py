"""The production loop end to end: serve a tiny run with ``--capture``, send requests and feedback (the
``openai`` client and plain HTTP), turn them into SFT and preference rows, and ``monitor`` the traffic —
in-distribution traffic is stable (exit 0), shifted traffic drifts (exit 4).

Served: a tiny random Llama base and a chat LoRA run on it whose config names a training file of store
questions. A greedy and a sampled answer to one question give two answers to one prompt to rate.
"""

from __future__ import annotations

import http.client
import json
import re

import openai
import pytest

from tests.unit.serve.tiny_runs import write_chat_run
from tunesmith.cli import main
from tunesmith.data.formats import read_source
from tunesmith.data.preference_formats import read_preference_source
from tunesmith.data.traffic import feedback_rows, rating_score, read_traffic
from tunesmith.errors import DataError
from tunesmith.evaluate.monitor import is_refusal, trends
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.capture import Capture
from tunesmith.serve.models import load_registry
from tunesmith.serve.server import ServerThread

ITEMS = ["kettle", "toaster", "blender", "lamp", "mixer", "fan", "heater", "radio"]
QUESTIONS = [
    "How much does the {} cost?",
    "Is the {} in stock?",
    "Can I return the {}?",
    "What colours does the {} come in?",
    "How long is the warranty on the {}?",
]
SHIFTED = [
    "Explain the proof of the fundamental theorem of algebra using complex analysis and Liouville's theorem",
    "Translate into German: the committee postponed its decision about the railway tunnel until spring",
    "Write a haiku about glaciers melting under a violet sky near the northern research station",
    "Summarise the causes of the Thirty Years War including the Defenestration of Prague in detail",
]


@pytest.fixture(scope="module")
def loop(tmp_path_factory, default_tokenizer):
    root = tmp_path_factory.mktemp("loop")
    rows = [
        {
            "messages": [
                {"role": "user", "content": q.format(i)},
                {"role": "assistant", "content": f"The {i}."},
            ]
        }
        for q in QUESTIONS
        for i in ITEMS
    ]
    run_dir = write_chat_run(root, default_tokenizer, rows)
    registry = load_registry([str(run_dir), str(root / "base")])
    return root, run_dir, registry


def _post(server, path, body):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read().decode())
    conn.close()
    return resp.status, data


def _ask(client, model, question, **sampling):
    messages = [{"role": "user", "content": question}]
    sampling = sampling or {"temperature": 0}
    return client.chat.completions.create(model=model, messages=messages, max_tokens=6, **sampling)


def _serve_and_rate(loop, traffic):
    """Questions through the openai client and plain HTTP, feedback both ways; what the test checks."""
    registry = loop[2]
    capture = Capture(traffic)
    with ServerThread(create_app(registry, ServeSettings(capture=capture))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        same = "Is the kettle in stock? Mail me at jane.doe@example.com"
        tuned, base = _ask(client, "shop-bot", same), _ask(client, "shop-bot", same, temperature=1.0, seed=7)
        texts = [tuned.choices[0].message.content, base.choices[0].message.content]
        assert texts[0].strip() and texts[1].strip() and texts[0] != texts[1]
        others = [_ask(client, "shop-bot", q.format(i)) for q in QUESTIONS[:3] for i in ITEMS[:4]]
        status, plain = _post(
            server, "/v1/completions", {"model": "shop-bot", "prompt": ["a", "b"], "max_tokens": 3}
        )
        assert status == 200 and plain["id"].startswith("cmpl-")
        # Feedback: the openai client's generic post and plain HTTP; up/down pair, a correction, stars.
        up = client.post("/feedback", body={"response_id": tuned.id, "rating": "up"}, cast_to=object)
        assert up == {"object": "feedback", "response_id": tuned.id, "index": 0, "score": 1.0}
        assert _post(server, "/v1/feedback", {"response_id": base.id, "rating": "down"})[0] == 200
        fix = {"response_id": others[0].id, "rating": 2, "correction": "It costs 20 EUR.", "comment": "wrong"}
        assert _post(server, "/v1/feedback", fix) == (
            200,
            {"object": "feedback", "response_id": others[0].id, "index": 0, "score": 0.25},
        )
        assert _post(server, "/v1/feedback", {"response_id": plain["id"], "index": 1, "rating": 5})[0] == 200
        missing = _post(server, "/v1/feedback", {"response_id": "chatcmpl-nope", "rating": "up"})
        assert (
            missing[0] == 404
            and "no captured answer has the id 'chatcmpl-nope'" in missing[1]["error"]["message"]
        )
        bad = _post(server, "/v1/feedback", {"response_id": tuned.id, "rating": 7})
        assert bad[0] == 400 and bad[1]["error"]["param"].startswith("rating")
        metrics = client.get(server.url + "/metrics", cast_to=str)
    return tuned, base, others, plain, metrics


def test_capture_feedback_to_training_rows_and_metrics(loop, tmp_path):
    traffic = tmp_path / "traffic"
    tuned, base, others, plain, metrics = _serve_and_rate(loop, traffic)
    captures, feedback = read_traffic(traffic)
    assert len(captures) == 2 + 12 + 2 and len(feedback) == 4
    first = next(c for c in captures if c["id"] == tuned.id)
    # Redacted before it was written: the address is nowhere in the directory.
    assert first["messages"] == [{"role": "user", "content": "Is the kettle in stock? Mail me at [EMAIL]"}]
    assert first["redacted"] == 1 and first["output"] == tuned.choices[0].message.content
    assert first["prompt_tokens"] == tuned.usage.prompt_tokens and first["latency_s"] > 0
    assert not any("jane.doe" in p.read_text() for p in traffic.iterdir())
    assert [c["prompt"] for c in captures if c["id"] == plain["id"]] == ["a", "b"]
    assert re.search(r"^tunesmith_feedback_total 4$", metrics, re.M)
    assert re.search(r"^tunesmith_feedback_rate 0\.250000$", metrics, re.M)  # 4 ratings / 16 answers
    assert re.search(r"^tunesmith_feedback_score_mean 0\.562500$", metrics, re.M)  # (1 + 0 + .25 + 1) / 4

    out = tmp_path / "fb"
    assert main(["data", "from-feedback", str(traffic), "--out", str(out)]) == 0
    question = others[0].choices[0].message.content
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert sft == [
        {
            "messages": [
                {"role": "user", "content": "How much does the kettle cost?"},
                {"role": "assistant", "content": "It costs 20 EUR."},
            ]
        }
    ]
    # Both files read back as training data: SFT chat rows and DPO pairs.
    assert read_source(out / "sft.jsonl").counts["kept"] == 1
    assert read_preference_source(out / "preference.jsonl", "preference").counts["kept"] == 2
    prefs = [json.loads(line) for line in (out / "preference.jsonl").read_text().splitlines()]
    asked = [{"role": "user", "content": "Is the kettle in stock? Mail me at [EMAIL]"}]
    assert prefs == [
        {
            "prompt": [{"role": "user", "content": "How much does the kettle cost?"}],
            "chosen": "It costs 20 EUR.",
            "rejected": question,
        },
        {
            "prompt": asked,
            "chosen": tuned.choices[0].message.content,
            "rejected": base.choices[0].message.content,
        },
    ]


def _record(capture, prompts):
    for k, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": prompt}]
        capture.record(
            route="chat",
            model="shop-bot",
            response_id=f"chatcmpl-{k}",
            index=0,
            output="The kettle.",
            finish_reason="stop",
            latency_s=0.1,
            prompt_tokens=9,
            completion_tokens=3,
            messages=messages,
        )


def test_monitor_stable_on_training_like_traffic_and_drifting_on_shifted(loop, tmp_path, capsys):
    _, run_dir, registry = loop
    calm, shifted = tmp_path / "calm", tmp_path / "shifted"
    _record(Capture(calm), [q.format(i) for q in QUESTIONS for i in ITEMS[:4]])
    assert main(["monitor", str(calm), "--run", str(run_dir)]) == 0
    # Served traffic: 14 store questions and 2 off-topic requests.
    with ServerThread(create_app(registry, ServeSettings(capture=Capture(shifted)))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        store = [q.format(i) for q in QUESTIONS for i in ITEMS][: 14 * 3 : 3]
        for question in store + SHIFTED[:2]:
            _ask(client, "shop-bot", question)
    assert main(["monitor", str(shifted), "--run", str(run_dir), "--out", str(tmp_path / "report")]) == 4
    printed = capsys.readouterr().out
    assert "monitor verdict: STABLE" in printed and "monitor verdict: DRIFTING" in printed
    report = json.loads((tmp_path / "report" / "monitor.json").read_text())
    assert report["reasons"] == ["oov_rate 0.2604 >= 0.1"]
    assert (report["stats"]["ood_share"], report["stats"]["length_ks"]) == (0.125, 0.1625)
    assert report["n_traffic"] == 16 and report["trends"][0]["requests"] == 16
    assert (tmp_path / "report" / "monitor.html").read_text().count("<img") == 2


def test_streamed_answers_are_captured_and_feedback_is_off_without_capture(loop, tmp_path):
    registry = loop[2]
    capture = Capture(tmp_path / "traffic")
    with ServerThread(create_app(registry, ServeSettings(capture=capture))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Is the lamp in stock?"}]
        stream = client.chat.completions.create(
            model="shop-bot", messages=messages, max_tokens=6, temperature=0, stream=True
        )
        chunks = list(stream)
    (row,) = read_traffic(tmp_path / "traffic")[0]
    assert row["id"] == chunks[0].id and row["messages"] == messages
    assert row["output"] == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert row["completion_tokens"] == 6 and row["finish_reason"] == "length"
    with ServerThread(create_app(registry)) as server:
        status, body = _post(server, "/v1/feedback", {"response_id": row["id"], "rating": "up"})
    assert status == 404 and body["error"]["code"] == "feedback_disabled"


def test_capture_rotates_caps_and_remembers_ids_across_restarts(tmp_path):
    capture = Capture(tmp_path, rotate_bytes=600, max_bytes=1500)
    _record(capture, [f"question {k} from +1 415 555 2671" for k in range(12)])
    files = sorted(tmp_path.glob("capture-*.jsonl"))
    sizes = [p.stat().st_size for p in files]
    assert len(files) >= 2 and all(size <= 600 for size in sizes) and sum(sizes) <= 1500
    assert capture.deleted_files > 0 and capture.redacted == {"PHONE": 12}
    kept = [row["id"] for row in read_traffic(tmp_path)[0]]
    assert kept[-1] == "chatcmpl-11" and "chatcmpl-0" not in kept  # the oldest went first
    with files[-1].open("a") as f:
        f.write('{"id": "torn')  # a crash mid-write: the reader skips the line
    again = Capture(tmp_path)
    assert again.is_known("chatcmpl-11") and not again.is_known("chatcmpl-11", index=1)
    assert [row["id"] for row in read_traffic(tmp_path)[0]] == kept
    assert again.feedback("chatcmpl-11", 4, correction="Call +1 415 555 2671") == 0.75
    (fb,) = read_traffic(tmp_path)[1]
    assert fb["correction"] == "Call [PHONE]" and fb["rating"] == 4


def test_feedback_rows_skip_empty_answers_and_orphans():
    asked = [{"role": "user", "content": "Hi"}]
    captures = [
        {"id": "a", "index": 0, "messages": asked, "output": "Hello!"},
        {"id": "b", "index": 0, "messages": asked, "output": "  "},
        {"id": "c", "index": 0, "prompt": "Hi", "output": "Go away."},
    ]
    feedback = [
        {"id": "a", "index": 0, "score": 0.0},
        {"id": "a", "index": 0, "score": 1.0},  # the latest rating of an answer wins
        {"id": "b", "index": 0, "score": 0.0},  # an empty answer pairs with nothing
        {"id": "c", "index": 0, "score": 0.25, "correction": "Hello, how can I help?"},
        {"id": "gone", "index": 0, "score": 1.0},
    ]
    sft, prefs, counts = feedback_rows(captures, feedback)
    fixed = [*asked, {"role": "assistant", "content": "Hello, how can I help?"}]
    assert sft == [{"messages": fixed}]
    # The completion prompt "Hi" is the same one-user-turn prompt as the chat: "Hello!" beats "Go away.".
    assert prefs == [
        {"prompt": asked, "chosen": "Hello, how can I help?", "rejected": "Go away."},
        {"prompt": asked, "chosen": "Hello!", "rejected": "Go away."},
    ]
    assert counts == {
        "responses": 3,
        "feedback": 5,
        "rated_responses": 3,
        "orphaned": 1,
        "sft_rows": 1,
        "preference_rows": 2,
    }
    with pytest.raises(DataError, match="rating must be"):
        rating_score(0)


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ("I can't help with that request.", True),
        ("I'm sorry, but that is not something I can share.", True),
        ("As an AI, I do not have opinions.", True),
        ("I am unable to provide medical advice.", True),
        ("The kettle costs 20 EUR; I can help you order it.", False),
        ("Sorry for the wait! It is in stock.", False),
    ],
)
def test_is_refusal(answer, refused):
    assert is_refusal(answer) is refused


def test_trends_bucket_by_the_smallest_width_that_fits():
    day = 86_400
    captures = [
        {"time": t, "output": o} for t, o in [(0, "Yes."), (60, "I can't help with that."), (day, "No.")]
    ]
    feedback = [{"time": 30, "score": 1.0}, {"time": day + 5, "score": 0.0}, {"time": day + 9, "score": 0.5}]
    rows = trends(captures, feedback, [4, 6, 10], [False, True, False])
    # A one-day span: hour buckets (minute ones would be 1,440 > 48); only the two used ones are listed.
    assert [(r["start"], r["requests"], r["ratings"]) for r in rows] == [
        ("01-01 00:00", 2, 1),
        ("01-02 00:00", 1, 2),
    ]
    assert rows[0] == {
        "start": "01-01 00:00",
        "bucket_s": 3600,
        "requests": 2,
        "input_tokens_mean": 5.0,
        "ood_share": 0.5,
        "refusal_share": 0.5,
        "ratings": 1,
        "rating_mean": 1.0,
    }
    assert rows[1]["rating_mean"] == 0.25
