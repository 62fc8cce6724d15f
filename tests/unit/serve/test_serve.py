"""``tunesmith serve`` end to end: a real uvicorn server on 127.0.0.1 and the official ``openai`` client.

Served: a tiny random Llama base saved to disk, a chat LoRA run and a classification LoRA run on it (random,
non-zero LoRA weights so each adapter changes the output). Greedy answers are compared with the reference
path (``load_trained`` + ``generate_texts``), so a wrong adapter, template or padding shows up as a
different text. Limits are tested against a fake model that the test releases token by token.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import re
import socket
import threading
import time
from types import SimpleNamespace

import openai
import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.serve.fakes import FixedTokenModel
from tunesmith.api import train
from tunesmith.config import RunConfig, dump_config, load_config
from tunesmith.errors import ConfigError
from tunesmith.export import export
from tunesmith.infer.generate import generate_texts, label_log_likelihoods, label_token_ids
from tunesmith.models.loading import load_causal_lm
from tunesmith.pipelines.scoring import reward_scorer
from tunesmith.runs import load_trained
from tunesmith.serve.app import ROUTES, ServeSettings, create_app
from tunesmith.serve.batcher import Batcher, classification_prompt
from tunesmith.serve.capture import Capture
from tunesmith.serve.cli import add_parser
from tunesmith.serve.http import PUBLIC_ROUTES
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.models import LoadedBase, Registry, ServedModel, load_registry
from tunesmith.serve.server import ServerThread, check_bind
from tunesmith.serve.vllm import exec_vllm, vllm_command
from tunesmith.serve.work import Finished, Job, SamplingParams

KEY = "test-key-0123456789abcdef"
LABELS = ["positive", "negative"]
SYSTEM = "You are terse."
CAP = 64
FEEDBACK_TARGET = {"route": "chat", "model": "base", "response_id": "chatcmpl-rated", "index": 0}
FEEDBACK_TARGET |= {"messages": [{"role": "user", "content": "Hi"}], "completion_tokens": 1}
BODY_LIMIT = 16_000


def _write_run(root, name, base_dir, tokenizer, seed, task, system_prompt=None):
    from peft import LoraConfig, get_peft_model

    run_dir = root / name
    model = make_tiny_llama(len(tokenizer))
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")
    cfg = RunConfig(name=name, model={"name": str(base_dir)}, data={"system_prompt": system_prompt})
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "summary.json").write_text(json.dumps({"task": task}))
    report = {"label_names": LABELS if task == "classification" else None}
    (run_dir / "data_report.json").write_text(json.dumps(report))
    return run_dir


def _train_reward_run(root, base_dir):
    pairs = root / "pairs.jsonl"
    rows = [{"prompt": f"Colour {i}?", "chosen": "red", "rejected": "a dog"} for i in range(8)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"output_dir={root}", "name=judge", f"model.name={base_dir}", f"data.train={pairs}"]
    overrides += ["objective.name=reward", "train.max_steps=2", "train.precision=fp32", "eval.batch_size=4"]
    train(load_config(None, overrides))
    return root / "judge"


@pytest.fixture(scope="module")
def env(tmp_path_factory, default_tokenizer):
    root = tmp_path_factory.mktemp("serve")
    base_dir = root / "base"
    make_tiny_llama(len(default_tokenizer)).save_pretrained(base_dir)
    default_tokenizer.save_pretrained(base_dir)
    chat_run = _write_run(root, "chat-run", base_dir, default_tokenizer, 1, "generation", SYSTEM)
    triage = _write_run(root, "triage", base_dir, default_tokenizer, 2, "classification")
    reward = _train_reward_run(root, base_dir)
    registry = load_registry([str(chat_run), str(triage), str(base_dir), str(reward)])
    capture = Capture(
        root / "traffic"
    )  # every test's traffic is captured; one answer to rate for the auth test
    capture.record(**FEEDBACK_TARGET, output="Hi", finish_reason="stop", latency_s=0.1, prompt_tokens=3)
    settings = ServeSettings(
        api_keys=(KEY,),
        max_body_bytes=BODY_LIMIT,
        max_tokens_cap=CAP,
        max_concurrent=4,
        batch_wait_ms=2,
        capture=capture,
    )
    server = ServerThread(create_app(registry, settings), api_keys=(KEY,)).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    yield SimpleNamespace(
        registry=registry, server=server, client=client, tok=default_tokenizer, base_dir=base_dir, runs=root
    )
    server.stop()


def _http(server, method, path, body=None, key=KEY, raw=None):
    """(status, parsed JSON or text) of one request, with the stdlib only."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(
        method, path, body=raw if raw is not None else json.dumps(body) if body else None, headers=headers
    )
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    is_json = resp.getheader("content-type", "").startswith("application/json")
    return resp.status, json.loads(text) if is_json else text


def _metric(text, name, labels=""):
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _chat_ids(tok, messages):
    return tok(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )["input_ids"]


def _reference_chat(env, model_id, user, max_tokens):
    """What the tuned (or base) model answers greedily, computed without the server."""
    if model_id == "base":
        model, messages = load_causal_lm(str(env.base_dir)), [{"role": "user", "content": user}]
    else:
        model, _, _ = load_trained(env.runs / model_id)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    model.eval()
    return generate_texts(model, env.tok, [_chat_ids(env.tok, messages)], max_new_tokens=max_tokens)[0]


def test_models_listed_and_base_loaded_once(env):
    ids = sorted(m.id for m in env.client.models.list().data)
    assert ids == ["base", "chat-run", "triage"]
    models = env.registry.models
    assert len(env.registry.bases) == 1
    assert models["chat-run"].base is models["triage"].base is models["base"].base
    assert models["chat-run"].base.adapters == ["chat_run", "triage"]
    assert (models["chat-run"].kind, models["base"].kind, models["triage"].task) == (
        "adapter",
        "base",
        "classification",
    )


@pytest.mark.parametrize("model_id", ["chat-run", "base"])
def test_chat_greedy_matches_reference(env, model_id):
    resp = env.client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hi there"}], max_tokens=12, temperature=0
    )
    text = resp.choices[0].message.content
    assert text.strip() == _reference_chat(env, model_id, "Hi there", 12)
    assert resp.model == model_id and resp.object == "chat.completion"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_adapters_change_the_answer(env):
    texts = {
        m: env.client.chat.completions.create(
            model=m, messages=[{"role": "user", "content": "Hi there"}], max_tokens=12, temperature=0
        )
        .choices[0]
        .message.content
        for m in ("chat-run", "triage", "base")
    }
    assert len(set(texts.values())) == 3, texts


def test_streaming_concatenates_to_greedy_text(env):
    kwargs = dict(
        model="chat-run", messages=[{"role": "user", "content": "Tell me"}], max_tokens=16, temperature=0
    )
    full = env.client.chat.completions.create(**kwargs)
    chunks = list(
        env.client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_stream_wire_format_ends_with_done(env):
    body = {"model": "base", "prompt": "Once", "max_tokens": 4, "temperature": 0, "stream": True}
    status, text = _http(env.server, "POST", "/v1/completions", body)
    events = [line for line in text.split("\n\n") if line]
    assert status == 200 and all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    pieces = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
    full = env.client.completions.create(model="base", prompt="Once", max_tokens=4, temperature=0)
    assert "".join(pieces) == full.choices[0].text


def test_completions_match_reference(env):
    resp = env.client.completions.create(model="base", prompt="The store opens", max_tokens=10, temperature=0)
    ids = env.tok("The store opens")["input_ids"]
    model = load_causal_lm(str(env.base_dir)).eval()
    assert resp.choices[0].text.strip() == generate_texts(model, env.tok, [ids], max_new_tokens=10)[0]
    assert resp.usage.prompt_tokens == len(ids) and resp.object == "text_completion"


def test_sampling_seed_top_p_and_stop(env):
    def ask(**kw):
        args = dict(model="chat-run", messages=[{"role": "user", "content": "Go"}], max_tokens=12) | kw
        return env.client.chat.completions.create(**args).choices[0]

    greedy = ask(temperature=0).message.content
    assert ask(temperature=1.3, seed=7).message.content == ask(temperature=1.3, seed=7).message.content
    # A nucleus so small it holds only the most likely token is greedy decoding, at any temperature.
    assert ask(temperature=1.5, top_p=1e-6, seed=3).message.content == greedy
    stop = greedy[3:6]
    stopped = ask(temperature=0, stop=[stop])
    assert stopped.message.content == greedy[: greedy.index(stop)] and stopped.finish_reason == "stop"
    assert ask(temperature=0, max_tokens=2).finish_reason == "length"


def _classify(client, body):
    """POST /v1/classify through the openai client's generic request method (no typed helper exists)."""
    return client.post("/classify", body=body, cast_to=object)


def test_classify(env):
    texts = ["great service", "terrible wait", "ok"]
    body = _classify(env.client, {"model": "triage", "input": texts})
    assert body["object"] == "list" and body["model"] == "triage"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    model, tok, _ = load_trained(env.runs / "triage")
    prompts = [classification_prompt(env.registry.models["triage"], t) for t in texts]
    expected = label_log_likelihoods(model, prompts, label_token_ids(tok, LABELS), tok.pad_token_id).softmax(
        -1
    )
    for row, probs in zip(body["data"], expected.tolist(), strict=True):
        assert list(row["probabilities"]) == LABELS
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(row["probabilities"].values()) == pytest.approx(probs, abs=1e-5)
        assert row["label"] == LABELS[probs.index(max(probs))]
    assert len(_classify(env.client, {"model": "triage", "input": "single"})["data"]) == 1


def test_classify_errors(env):
    with pytest.raises(openai.BadRequestError) as err:
        _classify(env.client, {"model": "chat-run", "input": "x"})
    assert "generation model" in err.value.message
    bad = openai.OpenAI(base_url=env.server.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        _classify(bad, {"model": "triage", "input": "x"})
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"


# One valid request per authenticated route: with the right key each answers 200, so a 401 is the key's.
AUTH_REQUESTS = {
    "/v1/models": ("get", None),
    "/v1/chat/completions": (
        "post",
        {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
    ),
    "/v1/completions": ("post", {"model": "base", "prompt": "Hi", "max_tokens": 1}),
    "/v1/classify": ("post", {"model": "triage", "input": "x"}),
    "/v1/score": ("post", {"model": "judge", "input": "red"}),
    "/v1/feedback": ("post", {"response_id": "chatcmpl-rated", "rating": "up"}),
    "/metrics": ("get", None),
}
NO_KEY = {"headers": {"Authorization": openai.Omit()}}


def test_score_route_matches_the_reward_runs_scorer(env):
    messages = [{"role": "user", "content": "Colour 1?"}]
    body = {"model": "judge", "input": ["red", "a dog"], "messages": messages}
    status, got = _http(env.server, "POST", "/v1/score", body)
    expected = reward_scorer(env.runs / "judge")(["red", "a dog"], [{"messages": messages}] * 2)
    assert status == 200 and [row["score"] for row in got["data"]] == pytest.approx(expected, abs=1e-5)
    status, missing = _http(env.server, "POST", "/v1/score", {"model": "chat-run", "input": "x"})
    assert status == 404 and "not a served reward model; served: judge" in missing["error"]["message"]


def _request(env, route, key):
    """One request through the openai client's generic methods; ``key=None`` sends no Authorization."""
    client = env.client.with_options(api_key=key or "unused")
    url = route.removeprefix("/v1") if route.startswith("/v1/") else env.server.url + route
    method, body = AUTH_REQUESTS.get(route, ("get", None))
    options = NO_KEY if key is None else {}
    cast_to = str if route == "/metrics" else object
    if method == "get":
        return client.get(url, cast_to=cast_to, options=options)
    return client.post(url, body=body, cast_to=cast_to, options=options)


def test_auth_requests_cover_every_route():
    assert frozenset({"/health"}) == PUBLIC_ROUTES
    assert set(AUTH_REQUESTS) == set(ROUTES) - PUBLIC_ROUTES


@pytest.mark.parametrize("route", sorted(AUTH_REQUESTS))
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_every_route_but_health_needs_the_key(env, route, key):
    with pytest.raises(openai.AuthenticationError) as err:
        _request(env, route, key)
    assert err.value.response.json() == {
        "error": {
            "message": "Incorrect or missing API key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert err.value.response.headers["www-authenticate"] == "Bearer"
    assert ("authorization" in err.value.request.headers) == (key is not None)
    assert _request(env, route, KEY)  # the same request with the key is answered (200)


def test_health_needs_no_key(env):
    expected = {"status": "ok", "models": ["base", "chat-run", "triage"]}
    assert _request(env, "/health", None) == expected
    assert _request(env, "/health", "wrong-key") == expected


def test_serves_a_merged_export(env, tmp_path):
    """An exported merged model directory is served as a model of its own, named after its folder."""
    merged = export(env.runs / "chat-run", "merged", tmp_path / "chat-merged")
    registry = load_registry([str(merged)])
    served = registry.models["chat-merged"]
    assert (served.kind, served.adapter_name, served.context_length) == ("base", None, 512)
    with ServerThread(create_app(registry, ServeSettings(api_keys=(KEY,))), api_keys=(KEY,)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["chat-merged"]
        resp = client.chat.completions.create(
            model="chat-merged",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi there"}],
            max_tokens=12,
            temperature=0,
        )
    # the merged folder carries no run config, so the run's system prompt is sent explicitly
    assert resp.choices[0].message.content.strip() == _reference_chat(env, "chat-run", "Hi there", 12)


def test_oversized_body_is_413(env):
    with pytest.raises(openai.APIStatusError) as err:
        env.client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "x" * BODY_LIMIT}]
        )
    assert err.value.status_code == 413
    assert (
        set(err.value.body) == {"message", "type", "param", "code"} and str(BODY_LIMIT) in err.value.message
    )


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("temperature", 2.5, "temperature must be in [0, 2], got 2.5"),
        ("temperature", -0.1, "got -0.1"),
        ("top_p", 0.0, "top_p must be in (0, 1]"),
        ("n", 2, "n must be 1"),
    ],
)
def test_invalid_sampling_is_400(env, field, value, needle):
    with pytest.raises(openai.BadRequestError) as err:
        env.client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "Hi"}], **{field: value}
        )
    assert needle in err.value.message and err.value.body["param"] == field


def test_max_tokens_over_cap_is_400(env):
    with pytest.raises(openai.BadRequestError) as err:
        env.client.completions.create(model="base", prompt="Hi", max_tokens=CAP + 1)
    assert (
        f"max_tokens is too large: {CAP + 1}" in err.value.message and f"at most {CAP}" in err.value.message
    )


def test_context_overflow_is_400_with_numbers(env):
    prompt = "word " * 470
    n = len(env.tok(prompt)["input_ids"])
    assert n + CAP > 512
    with pytest.raises(openai.BadRequestError) as err:
        env.client.completions.create(model="base", prompt=prompt, max_tokens=CAP)
    assert err.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512 tokens" in err.value.message
    assert f"you requested {n + CAP} tokens ({n} in the prompt, {CAP} in the completion)" in err.value.message


def test_unknown_model_is_404(env):
    with pytest.raises(openai.NotFoundError) as err:
        env.client.completions.create(model="nope", prompt="Hi", max_tokens=2)
    assert err.value.body["code"] == "model_not_found"


def test_metrics_count_requests_and_tokens(env):
    def read():
        return _http(env.server, "GET", "/metrics")[1]

    ok = '{route="/v1/completions",status="200"}'
    bad = '{route="/v1/completions",status="400"}'
    before = read()
    usage = [
        env.client.completions.create(model="base", prompt=p, max_tokens=5, temperature=0).usage
        for p in ("a", "b")
    ]
    with pytest.raises(openai.BadRequestError):
        env.client.completions.create(model="base", prompt="a", temperature=9)
    after = read()
    assert (
        _metric(after, "tunesmith_requests_total", ok) - _metric(before, "tunesmith_requests_total", ok) == 2
    )
    assert (
        _metric(after, "tunesmith_requests_total", bad) - _metric(before, "tunesmith_requests_total", bad)
        == 1
    )
    generated = '{model="base"}'
    delta = _metric(after, "tunesmith_generated_tokens_total", generated) - _metric(
        before, "tunesmith_generated_tokens_total", generated
    )
    assert delta == sum(u.completion_tokens for u in usage)
    assert "# TYPE tunesmith_request_latency_seconds histogram" in after
    assert _metric(after, "tunesmith_in_flight_requests") == 0


def test_batcher_groups_same_model_jobs_and_left_pads_correctly(env):
    """Jobs queued together for one model run as one batch; other models wait for their own batch."""
    metrics = Metrics([])
    batcher = Batcher(metrics, max_batch_size=8, wait_ms=0)
    served, base = env.registry.models["chat-run"], env.registry.models["base"]
    prompts = [env.tok(t)["input_ids"] for t in ("Hello", "A much longer prompt than the first", "Mid size")]
    done: dict[int, Finished] = {}
    finished = threading.Semaphore(0)

    def emit_for(i):
        def emit(event):
            if isinstance(event, Finished):
                done[i] = event
                finished.release()

        return emit

    jobs = [
        Job(served, emit_for(i), prompt_ids=p, params=SamplingParams(8, 0.0)) for i, p in enumerate(prompts)
    ]
    jobs.insert(1, Job(base, emit_for(3), prompt_ids=prompts[0], params=SamplingParams(8, 0.0)))
    for job in jobs:
        batcher.submit(job)  # all queued before the worker starts: the grouping is deterministic
    batcher.start()
    try:
        assert all(finished.acquire(timeout=60) for _ in jobs)
    finally:
        batcher.stop()
    assert (metrics.batch_sizes.n, metrics.batch_sizes.total) == (2, 4.0)  # batches of 3 and 1
    model, _, _ = load_trained(env.runs / "chat-run")
    expected = generate_texts(model, env.tok, prompts, max_new_tokens=8)
    assert [done[i].text.strip() for i in range(3)] == expected


def _wait_for(predicate, what):
    for _ in range(400):  # bounded: 20 s at most, normally a few milliseconds
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_concurrency_cap_429_and_disconnect_frees_slot(default_tokenizer):
    token = default_tokenizer.encode("a", add_special_tokens=False)[0]
    fake = FixedTokenModel(token, gated=True)
    registry = Registry()
    registry.add(
        ServedModel("slow", "base", LoadedBase("slow", fake), default_tokenizer, "fake", context_length=512)
    )
    app = create_app(registry, ServeSettings(max_concurrent=1, max_tokens_cap=64))
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        metrics = lambda: _http(server, "GET", "/metrics")[1]  # noqa: E731
        body = json.dumps(
            {
                "model": "slow",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 50,
                "stream": True,
            }
        ).encode()
        sock = socket.create_connection((server.host, server.port), timeout=30)
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b'"content":"a"' not in received.replace(b" ", b""):  # the first token: the slot is held
            chunk = sock.recv(4096)
            assert chunk, "stream closed early"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert err.value.status_code == 429 and "limit of 1 concurrent" in err.value.message
        assert err.value.response.headers["retry-after"] == "1"
        assert _metric(metrics(), "tunesmith_in_flight_requests") == 1
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()  # the client goes away mid-stream
        _wait_for(lambda: _metric(metrics(), "tunesmith_in_flight_requests") == 0, "the slot to be freed")
        fake.gate.set()  # the worker moves on: the abandoned row stops at its next token
        _wait_for(lambda: _metric(metrics(), "tunesmith_cancelled_total") == 1, "the row to be cancelled")
        resp = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert resp.choices[0].message.content == "aaa" and resp.choices[0].finish_reason == "length"


def test_refuses_public_bind_without_key(tmp_path):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "default", "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0 without authentication"):
        args.func(args)  # fails before any model is loaded
    with pytest.raises(ConfigError, match="refusing"):
        ServerThread(create_app(Registry()), host="0.0.0.0")
    check_bind("0.0.0.0", ("some-long-key-123456",))
    check_bind("127.0.0.1", ())
    check_bind("::1", ())
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\n\n")
    args = parser.parse_args(["serve", "default", "--host", "0.0.0.0", "--api-key-file", str(key_file)])
    with pytest.raises(ConfigError, match="holds no key"):
        args.func(args)


def test_vllm_handover(env):
    command = vllm_command(
        [str(env.runs / "chat-run"), str(env.runs / "triage"), str(env.base_dir)], "127.0.0.1", 9000
    )
    adapter = lambda name: f"{name}={(env.runs / name / 'adapter').resolve()}"  # noqa: E731
    assert command == [
        "vllm", "serve", str(env.base_dir.resolve()), "--host", "127.0.0.1", "--port", "9000",
        "--served-model-name", "base", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
        "--lora-modules", adapter("chat-run"), adapter("triage"),
    ]  # fmt: skip
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="cannot be installed on this CPU-only machine"):
            exec_vllm([str(env.base_dir)], "127.0.0.1", 9000, ())


def test_chat_with_an_index_answers_from_the_raft_prompt_and_lists_chunk_ids(env, tmp_path):
    from tunesmith.rag.chunk import Chunk
    from tunesmith.rag.index import RetrievalIndex
    from tunesmith.rag.prompt import render_rag_prompt

    chunks = [Chunk("birch#0", "birch", "The Birch lamp costs 42 euros."), Chunk("aster#0", "aster", "Teal.")]
    settings = ServeSettings(api_keys=(KEY,), index=RetrievalIndex(chunks), rag_k=2)
    with ServerThread(create_app(env.registry, settings), api_keys=(KEY,)) as server:
        body = {"model": "chat-run", "messages": [{"role": "user", "content": "Birch lamp price?"}]}
        status, resp = _http(
            server, "POST", "/v1/chat/completions", {**body, "max_tokens": 8, "temperature": 0}
        )
    assert status == 200 and resp["retrieved"] == ["birch#0"]
    asked = render_rag_prompt("Birch lamp price?", chunks[:1])
    assert resp["choices"][0]["message"]["content"].strip() == _reference_chat(env, "chat-run", asked, 8)


def test_a_run_that_records_rag_index_retrieves_from_it_unless_the_server_says_otherwise(env, tmp_path):
    import shutil

    import yaml

    from tunesmith.rag.chunk import Chunk
    from tunesmith.rag.index import RetrievalIndex
    from tunesmith.rag.prompt import render_rag_prompt

    run_dir = tmp_path / "raft-run"
    shutil.copytree(env.runs / "chat-run", run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["rag"] = {"index": str(tmp_path / "idx"), "k": 1}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    chunks = [
        Chunk("birch#0", "birch", "The Birch lamp costs 42 euros."),
        Chunk("oak#0", "oak", "Birch oak."),
    ]
    RetrievalIndex(chunks).save(tmp_path / "idx")
    registry = load_registry([str(run_dir)])
    assert registry.models["raft-run"].rag_k == 1 and len(registry.models["raft-run"].index.chunks) == 2
    assert load_registry([str(run_dir)], use_run_index=False).models["raft-run"].index is None
    body = {"model": "raft-run", "messages": [{"role": "user", "content": "Birch lamp price?"}]}
    body.update(max_tokens=8, temperature=0)
    forced = RetrievalIndex([Chunk("oak#0", "oak", "Birch oak.")])
    answers = {}
    for name, settings in (
        ("run", ServeSettings(api_keys=(KEY,))),  # rag.index, rag.k = 1
        ("k2", ServeSettings(api_keys=(KEY,), rag_k=2)),  # --rag-k wins over rag.k
        ("forced", ServeSettings(api_keys=(KEY,), index=forced)),  # --index wins over rag.index
    ):
        with ServerThread(create_app(registry, settings), api_keys=(KEY,)) as server:
            status, answers[name] = _http(server, "POST", "/v1/chat/completions", body)
        assert status == 200
    assert answers["run"]["retrieved"] == ["birch#0"]
    assert answers["k2"]["retrieved"] == ["birch#0", "oak#0"]
    assert answers["forced"]["retrieved"] == ["oak#0"]
    asked = render_rag_prompt("Birch lamp price?", chunks[:1])
    assert answers["run"]["choices"][0]["message"]["content"].strip() == _reference_chat(
        env, "chat-run", asked, 8
    )
