"""``--engine llama.cpp``: llama.cpp computes the logits, tunesmith's server does the rest.

Reference everywhere: the torch model the GGUF was exported from (f32 GGUF; llama.cpp keeps its KV cache in
f16, hence logits within 2e-3 of the largest, as the f16 export round trip). The engine tests need the
``llamacpp`` extra and skip without it; the export cache and the missing-extra error run everywhere.
"""

from __future__ import annotations

import sys

import openai
import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.serve.tiny_runs import write_chat_run
from tunesmith.export.gguf_export import write_gguf
from tunesmith.infer.generate import generate_texts
from tunesmith.models.loading import load_causal_lm
from tunesmith.runs import load_trained
from tunesmith.serve.models import LoadedBase, ServedModel, load_registry
from tunesmith.serve.work import Finished, Job, SamplingParams

TOL = 2e-3
SHARED = "You are a careful assistant for a hardware store. Answer in one short sentence. Question: "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    """A random tiny Llama, its f32 GGUF, and a served model id for it."""
    model = make_tiny_llama(len(default_tokenizer)).eval()
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    write_gguf(model, default_tokenizer, path, "f32", name="tiny")
    base = LoadedBase("tiny", model)
    served = ServedModel("tiny", "base", base, default_tokenizer, "test", context_length=512)
    return model, path, served


def _engine(tiny, slots=4):
    from tunesmith.serve.llamacpp import LlamaCppEngine

    pytest.importorskip("llama_cpp")
    _, path, served = tiny
    if served.engine is not None:
        served.engine.close()
    served.engine = LlamaCppEngine(path, slots, served.context_length, threads=1)
    return served.engine


def _job(served, tokenizer, text, max_tokens, done):
    params = SamplingParams(max_tokens, temperature=0.0)
    return Job(
        served,
        lambda e: done.append(e) if isinstance(e, Finished) else None,
        prompt_ids=tokenizer(text)["input_ids"],
        params=params,
    )


def test_prefill_logits_match_the_torch_model(tiny, default_tokenizer):
    engine = _engine(tiny)
    model = tiny[0]
    prompts = [default_tokenizer(t)["input_ids"] for t in ("Hi", SHARED + "Where are the nails?")]
    slots, logits = engine.prefill(prompts)
    assert sorted(slots) == [0, 1]
    for ids, got in zip(prompts, logits, strict=True):
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(got, want, atol=TOL * float(want.abs().max())), float((got - want).abs().max())
    step = engine.step(slots, [int(x.argmax()) for x in logits])
    with torch.no_grad():
        want = model(torch.tensor([prompts[1] + [int(logits[1].argmax())]])).logits[0, -1]
    assert torch.allclose(step[1], want, atol=TOL * float(want.abs().max()))


def test_rows_joining_and_leaving_generate_what_torch_generates(tiny, default_tokenizer):
    from tunesmith.serve.llamacpp import LlamaCppBatch

    engine = _engine(tiny)
    model, _, served = tiny
    texts, limits = ["Hi", SHARED + "Do you sell glue?", "Mid size prompt"], [14, 4, 9]
    done: list[Finished] = []
    jobs = [_job(served, default_tokenizer, t, n, done) for t, n in zip(texts, limits, strict=True)]
    batch = LlamaCppBatch(served, lambda model_id, finished: None)
    assert batch.admit(model, jobs[:1]) == 1
    for _ in range(3):
        batch.step(model)
    forwards = []
    decode = engine._decode
    engine._decode = lambda chunk: (forwards.append(len(chunk)), decode(chunk))[1]
    assert batch.admit(model, jobs[1:]) == 3
    # One forward: the newcomers' prompts and the running row's next token (its 5th) together.
    assert len(forwards) == 1 and len(batch.rows[0].ids) == 5
    while len(batch):
        batch.step(model)
    assert [d.completion_tokens for d in done] == [4, 9, 14]  # short rows left first
    expected = {
        generate_texts(model, default_tokenizer, [default_tokenizer(t)["input_ids"]], n)[0]
        for t, n in zip(texts, limits, strict=True)
    }
    assert {d.text.strip() for d in done} == expected
    assert not any(engine.busy)


def test_a_shared_prefix_is_computed_once_and_changes_no_token(tiny, default_tokenizer):
    from tunesmith.serve.llamacpp import LlamaCppBatch

    engine = _engine(tiny)
    model, _, served = tiny
    shared = len(default_tokenizer(SHARED + "Where")["input_ids"]) - 1  # tokens up to the question's start
    done: list[Finished] = []
    batch = LlamaCppBatch(served, lambda model_id, finished: None)
    questions = [SHARED + "Where are the nails?", SHARED + "Where is the paint?", SHARED + "Who are you?"]
    batch.admit(model, [_job(served, default_tokenizer, questions[0], 6, done)])
    batch.step(model)  # the first row is still running when the second arrives: its cells are shared
    batch.admit(model, [_job(served, default_tokenizer, questions[1], 6, done)])
    while len(batch):
        batch.step(model)
    assert engine.reused_tokens >= shared
    batch.admit(model, [_job(served, default_tokenizer, questions[2], 6, done)])  # from an idle slot
    while len(batch):
        batch.step(model)
    assert engine.reused_tokens >= 2 * len(default_tokenizer(SHARED)["input_ids"]) - 2
    expected = [
        generate_texts(model, default_tokenizer, [default_tokenizer(q)["input_ids"]], 6)[0] for q in questions
    ]
    assert [d.text.strip() for d in done] == expected


def test_a_full_cache_evicts_idle_prefixes_then_says_so(tiny, monkeypatch):
    from tunesmith.serve import llamacpp

    monkeypatch.setattr(llamacpp, "MAX_CACHE_CELLS", 64)
    engine = _engine(tiny, slots=2)
    model = tiny[0]
    cells = engine.ll.llama_n_ctx(engine.ctx)  # llama.cpp may round the 64 up
    first, second = [100] * (cells * 6 // 10), [200] * (cells * 6 // 10)
    slots, _ = engine.prefill([first])
    engine.release(slots[0])  # idle, its cells kept for reuse ...
    slots, logits = engine.prefill([second])  # ... until a prompt needs the room
    with torch.no_grad():
        want = model(torch.tensor([second])).logits[0, -1]
    # a long prompt of one repeated token: the f16 cache's rounding adds up over it
    assert torch.allclose(logits[0], want, atol=5 * TOL * float(want.abs().max()))
    with pytest.raises(RuntimeError, match="KV cache is full"):
        engine.prefill([first])  # the running row holds 60 % of the cells
    assert engine.busy == [True, False]


def test_server_answers_through_llama_cpp_as_the_torch_run_does(tmp_path, default_tokenizer, monkeypatch):
    pytest.importorskip("llama_cpp")
    from tests.unit.serve.test_serve import _chat_ids
    from tunesmith.export.gguf_export import cached_gguf
    from tunesmith.serve.app import ServeSettings, create_app
    from tunesmith.serve.cli import llama_cpp_files
    from tunesmith.serve.llamacpp import attach_engines
    from tunesmith.serve.server import ServerThread

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    run_dir = write_chat_run(tmp_path, default_tokenizer, [{"messages": []}])
    registry = load_registry([str(run_dir)])
    served = registry.models["shop-bot"]
    files = llama_cpp_files([served], "f32")
    assert files == {"shop-bot": (cached_gguf("shop-bot", served.source, "f32"), None)}  # alone: merged
    attach_engines(files, [served], slots=4)
    assert registry.models["shop-bot"].engine is not None
    messages = [{"role": "user", "content": "Hi there"}]
    model, _, _ = load_trained(run_dir)
    prompt = _chat_ids(default_tokenizer, messages)
    expected = generate_texts(model.eval(), default_tokenizer, [prompt], 12)[0]
    with ServerThread(create_app(registry, ServeSettings())) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        ask = {"model": "shop-bot", "messages": messages, "max_tokens": 12, "temperature": 0}
        resp = client.chat.completions.create(**ask)
        stream = client.chat.completions.create(**ask, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert resp.choices[0].message.content.strip() == expected
    assert streamed.strip() == expected


def test_runs_on_one_base_share_its_engine_through_gguf_adapters(tmp_path, default_tokenizer, monkeypatch):
    """The base and a LoRA run on it served together: one llama.cpp model, the run's adapter applied to its
    rows only; each id answers what its torch model generates, and a prefix cached under one id is not
    reused by the other (its keys and values differ)."""
    pytest.importorskip("llama_cpp")
    from tunesmith.serve.cli import llama_cpp_files
    from tunesmith.serve.llamacpp import LlamaCppBatch, attach_engines

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    run_dir = write_chat_run(tmp_path, default_tokenizer, [{"messages": []}])
    registry = load_registry([str(tmp_path / "base"), str(run_dir)])
    models = list(registry.models.values())
    files = llama_cpp_files(models, "f32")
    assert files["base"][1] is None and files["shop-bot"][1].name == "adapter.gguf"
    assert files["base"][0] == files["shop-bot"][0]  # the base's GGUF, exported once
    attach_engines(files, models, slots=4)
    base, run = registry.models["base"], registry.models["shop-bot"]
    assert base.engine is run.engine and base.lora is None and run.lora is not None
    tuned, _, _ = load_trained(run_dir)
    prompt = SHARED + "Do you sell glue?"
    want = {}
    plain = load_causal_lm(str(tmp_path / "base"), "float32").eval()  # the registry's copy has the adapter
    for served, model in ((run, tuned.eval()), (base, plain)):
        done: list[Finished] = []
        batch = LlamaCppBatch(served, lambda model_id, finished: None)
        reused = served.engine.reused_tokens
        batch.admit(model, [_job(served, default_tokenizer, prompt, 8, done)])
        while len(batch):
            batch.step(model)
        assert served.engine.reused_tokens == reused  # the other id's cached prompt is not this id's
        ids = [default_tokenizer(prompt)["input_ids"]]
        with torch.no_grad():
            want[served.id] = generate_texts(model, default_tokenizer, ids, 8)[0]
        assert done[0].text.strip() == want[served.id]
    assert want["base"] != want["shop-bot"]  # the adapter changes the answer: the check above has teeth
    run.engine.close()


def test_gguf_export_is_cached_by_the_weights_files(tmp_path, default_tokenizer, monkeypatch):
    from tunesmith.export.gguf_export import cached_gguf

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    run_dir = write_chat_run(tmp_path, default_tokenizer, [{"messages": []}])
    registry = load_registry([str(run_dir)])
    served = registry.models["shop-bot"]

    def gguf_for(served, gguf_type):
        return cached_gguf(served.id, served.source, gguf_type)

    path = gguf_for(served, "f16")
    assert path.is_file() and path.read_bytes()[:4] == b"GGUF"
    written = path.stat().st_mtime_ns
    assert gguf_for(served, "f16") == path and path.stat().st_mtime_ns == written  # not exported again
    assert gguf_for(served, "f32") != path
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # retrained in place: new mtime, new export
    assert gguf_for(served, "f16") != path


def test_missing_extra_is_a_clear_error_before_any_model_loads(monkeypatch, capsys):
    from tunesmith.cli import main

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    monkeypatch.setattr("tunesmith.serve.models.load_registry", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["serve", "default", "--engine", "llama.cpp"]) == 2
    assert "pip install 'tunesmith[llamacpp]'" in capsys.readouterr().err
