"""Fuzzing the server's request bodies in process (FastAPI's TestClient, a tiny served model): chat,
completions, classify, files and fine-tuning jobs. Whatever the body, path or id, the answer is a success or
a 4xx in the OpenAI error shape, never a 500: every crash the fuzzer found was fixed in the server.

Bodies are near misses: the request fields with values of every JSON type (huge and negative numbers,
unknown models, ``../`` in ids and file names), raw bytes, JSON that is not an object, nesting too deep.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_tiny_llama
from tests.fuzz import CASES, FAST, LONG, OUTCOMES, run_counted
from tunesmith.config import RunConfig, dump_config
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.jobs import JobsApi
from tunesmith.serve.models import load_registry

KEY = "fuzz-key-0123456789abcdef"
CAP = 3
MAX_INPUTS = 3
TRICKY = [
    "base",
    "triage",
    "nope",
    "",
    "../base",
    "..%2Fbase",
    "../../etc/passwd",
    "base\x00",
    "ft:x:y:z:w",
    "a" * 300,
]
texts = st.sampled_from(TRICKY) | st.text(max_size=12)
numbers = (
    st.sampled_from([0, 1, 2, CAP, CAP + 1, -1, 10**20, 1e308, float("inf")]) | st.integers() | st.floats()
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "bot"]) | json_values},
        optional={
            "content": texts | json_values | st.lists(st.fixed_dictionaries({"type": texts, "text": texts})),
        },
    )
    | json_values,
    max_size=3,
)
SAMPLING = {
    "model": texts | json_values,
    "max_tokens": numbers | json_values,
    "temperature": numbers,
    "top_p": numbers,
    "n": numbers,
    "stop": texts | st.lists(texts, max_size=6) | json_values,
    "seed": numbers,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
}
BODIES = {
    "/v1/chat/completions": {**SAMPLING, "messages": messages, "max_completion_tokens": numbers},
    "/v1/completions": {**SAMPLING, "prompt": texts | st.lists(texts, max_size=MAX_INPUTS + 1) | json_values},
    "/v1/classify": {
        "model": texts | json_values,
        "input": texts | st.lists(texts, max_size=MAX_INPUTS + 1) | json_values,
    },
}
raw_bodies = st.binary(max_size=40) | st.sampled_from(
    [b"", b"[]", b"null", b"{", b"[" * 50_000, b'{"a":' + b"9" * 5000 + b"}"]
)


VALID = {
    "/v1/chat/completions": {
        "model": "base",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "base", "prompt": "Once", "max_tokens": 2},
    "/v1/classify": {"model": "triage", "input": "good"},
}


@st.composite
def _bodies(draw: st.DrawFn, route: str) -> bytes:
    """A valid body with 0-3 fields replaced or added by fuzzed values (so most cases get past the first
    check to the next), or raw bytes now and then."""
    if draw(st.integers(0, 9)) == 0:
        return draw(raw_bodies)
    body = dict(VALID[route])
    for key in draw(st.lists(st.sampled_from(sorted(BODIES[route])), max_size=3, unique=True)):
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(BODIES[route][key])
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def client(tmp_path_factory, default_tokenizer):
    """A served tiny base (``base``) and classification adapter (``triage``), the jobs routes mounted without
    workers (jobs stay queued: the fuzzer checks the API, not training)."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("fuzz-serve")
    base, run = root / "base", root / "triage"
    make_tiny_llama(len(default_tokenizer)).save_pretrained(base)
    default_tokenizer.save_pretrained(base)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    get_peft_model(make_tiny_llama(len(default_tokenizer)), lora).save_pretrained(run / "adapter")
    default_tokenizer.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(dump_config(RunConfig(name="triage", model={"name": str(base)})))
    (run / "summary.json").write_text(json.dumps({"task": "classification"}))
    (run / "data_report.json").write_text(json.dumps({"label_names": ["yes", "no"]}))
    registry = load_registry([str(base), str(run)])
    settings = ServeSettings(
        api_keys=(KEY,),
        max_tokens_cap=CAP,
        default_max_tokens=2,
        max_body_bytes=64_000,
        max_inputs=MAX_INPUTS,
        batch_wait_ms=0,
    )
    app = create_app(registry, settings)
    jobs = JobsApi(root / "jobs", registry)
    jobs.add_routes(app)
    app.state.api.resolve = jobs.resolve
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {KEY}"
        yield test_client


def _check(resp: Any, target: str) -> None:
    """A success, or a 4xx whose JSON body says what was wrong: never a 500."""
    OUTCOMES[f"{target} {resp.status_code // 100}xx"] += 1
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["message"], resp.text
    elif resp.headers["content-type"].startswith("text/event-stream"):
        assert resp.text.rstrip().endswith("data: [DONE]"), resp.text[-300:]
    elif resp.headers["content-type"].startswith("application/json"):
        resp.json()


def _fuzz_route(client: TestClient, route: str, n: int) -> int:
    @given(body=_bodies(route))
    def prop(body: bytes) -> None:
        CASES[f"server {route}"] += 1
        _check(client.post(route, content=body, headers={"Content-Type": "application/json"}), route)

    return run_counted(f"server {route}", n, prop)


@st.composite
def file_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """Uploads with odd names and purposes, and reads / deletes of odd ids."""
    kind = draw(st.sampled_from(["upload", "upload", "get", "content", "delete", "list"]))
    ids = st.sampled_from(["file-x", "../jobs.db", "..%2F..%2Fjobs.db", "%00", "a/b"]) | st.text(max_size=8)
    fid = quote(draw(ids), safe="/%.")  # as a client sends it: control characters escaped, tricks kept
    if kind == "upload":
        name = draw(
            st.sampled_from(["rows.jsonl", "../../evil.jsonl", "/etc/passwd", "a\x00b", ""])
            | st.text(max_size=8)
        )
        data = draw(st.binary(max_size=200))
        purpose = draw(st.sampled_from(["fine-tune", "batch", ""]) | st.text(max_size=5))
        form = (
            {"files": {"file": (name, data)}, "data": {"purpose": purpose}}
            if draw(st.booleans())
            else {"content": draw(raw_bodies)}
        )
        return "post", "/v1/files", form
    path = {"get": f"/v1/files/{fid}", "content": f"/v1/files/{fid}/content", "delete": f"/v1/files/{fid}"}
    return {"delete": "delete"}.get(kind, "get"), path.get(kind, "/v1/files"), {}


@st.composite
def job_requests(draw: st.DrawFn, file_id: str) -> tuple[str, str, dict[str, Any]]:
    """Job creations with fields of every type (and sometimes a real upload), and actions on odd ids."""
    kind = draw(st.sampled_from(["create", "create", "create", "raw", "get", "action", "list"]))
    jid = quote(draw(st.sampled_from(["ftjob-x", "../x", "%2e%2e", ""]) | st.text(max_size=8)), safe="/%.")
    if kind == "create":
        method_type = draw(st.sampled_from(["supervised", "dpo", "reinforcement", "magic"]) | json_values)
        fields = {
            "model": st.sampled_from(["base", "triage", "../base"]) | json_values,
            "training_file": st.just(file_id) | texts | json_values,
            "validation_file": st.just(file_id) | texts | json_values,
            "suffix": texts | json_values,
            "seed": numbers | json_values,
            "metadata": st.dictionaries(texts, texts | json_values, max_size=2) | json_values,
            "hyperparameters": st.dictionaries(
                st.sampled_from(["n_epochs", "batch_size", "x"]), numbers | texts
            )
            | json_values,
            "method": st.fixed_dictionaries(
                {"type": st.just(method_type)},
                optional={
                    str(method_type): st.fixed_dictionaries(
                        {},
                        optional={"hyperparameters": st.dictionaries(texts, numbers | texts) | json_values},
                    )
                    | json_values,
                },
            )
            | json_values,
        }
        body = draw(st.fixed_dictionaries({}, optional=fields))
        return "post", "/v1/fine_tuning/jobs", {"content": json.dumps(body).encode()}
    if kind == "raw":
        return "post", "/v1/fine_tuning/jobs", {"content": draw(raw_bodies)}
    if kind == "action":
        action = draw(st.sampled_from(["cancel", "pause", "resume"]))
        return "post", f"/v1/fine_tuning/jobs/{jid}/{action}", {}
    if kind == "get":
        tail = draw(st.sampled_from(["", "/events", "/checkpoints"]))
        return (
            "get",
            f"/v1/fine_tuning/jobs/{jid}{tail}",
            {"params": {"limit": draw(texts), "after": draw(texts)}},
        )
    params = draw(st.dictionaries(st.sampled_from(["limit", "after", "metadata[k]", "x"]), texts, max_size=3))
    return "get", "/v1/fine_tuning/jobs", {"params": params}


def _fuzz_requests(client: TestClient, target: str, requests: st.SearchStrategy, n: int) -> int:
    @given(request=requests)
    def prop(request: tuple[str, str, dict[str, Any]]) -> None:
        CASES[target] += 1
        method, path, kwargs = request
        _check(client.request(method, path, **kwargs), target)

    return run_counted(target, n, prop)


def _uploaded(client: TestClient) -> str:
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    resp = client.post(
        "/v1/files", files={"file": ("r.jsonl", json.dumps(row).encode())}, data={"purpose": "fine-tune"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


@pytest.mark.parametrize("route", sorted(BODIES))
def test_inference_bodies_get_2xx_or_4xx_json(client, route):
    assert _fuzz_route(client, route, FAST) >= FAST


def test_files_requests_get_2xx_or_4xx_json(client):
    assert _fuzz_requests(client, "server /v1/files", file_requests(), FAST) >= FAST


def test_job_requests_get_2xx_or_4xx_json(client):
    assert (
        _fuzz_requests(client, "server /v1/fine_tuning/jobs", job_requests(_uploaded(client)), FAST) >= FAST
    )


@pytest.mark.chaos
@pytest.mark.parametrize("route", sorted(BODIES))
def test_inference_bodies_fuzz_long(client, route):
    assert _fuzz_route(client, route, LONG) >= LONG


@pytest.mark.chaos
def test_files_and_jobs_fuzz_long(client):
    assert _fuzz_requests(client, "server /v1/files", file_requests(), LONG) >= LONG
    assert (
        _fuzz_requests(client, "server /v1/fine_tuning/jobs", job_requests(_uploaded(client)), LONG) >= LONG
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed", 10**20, "seed must be a 64-bit integer, got 100000000000000000000"),
        ("temperature", float("nan"), "temperature must be in [0, 2], got nan"),
        ("top_p", float("nan"), "top_p must be in (0, 1], got nan"),
        ("temperature", 6e-232, None),  # was a 500: logits / temperature overflowed to inf, then NaN
        ("top_p", 6e-232, None),  # was a 500: top_p underflowed fp32 to 0 and no token was kept
    ],
)
def test_sampling_values_that_crashed_are_400(client, field, value, message):
    """A seed past 64 bits failed in torch.Generator (500); NaN slipped past the range checks."""
    headers = {"Content-Type": "application/json"}
    body = json.dumps({**VALID["/v1/completions"], field: value})
    resp = client.post("/v1/completions", content=body, headers=headers)
    if message is None:
        greedy_body = {**VALID["/v1/completions"], "temperature": 0}
        greedy = client.post("/v1/completions", content=json.dumps(greedy_body), headers=headers)
        assert resp.status_code == 200 and resp.json()["choices"] == greedy.json()["choices"]
        return
    assert resp.status_code == 400 and resp.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "the request body is not valid JSON"),
        (b"[1]", "the request body must be a JSON object, got list"),
        (b'{"model": "base", "training_file": {"a": 1}}', "training_file must be a file id, got dict"),
        (b'{"model": "base", "method": []}', "method must be an object, got list"),
        (b'{"model": "base", "method": {"type": "dpo", "dpo": 3}}', "method.dpo must be an object, got int"),
        (b'{"model": "base", "seed": true}', "seed must be an integer, got bool"),
    ],
)
def test_job_bodies_that_crashed_are_400(client, body, message):
    """Each of these was a 500 (JSONDecodeError, AttributeError, sqlite's InterfaceError) before the fix."""
    resp = client.post("/v1/fine_tuning/jobs", content=body)
    assert resp.status_code == 400 and resp.json()["error"]["message"] == message
