"""Hot-loading an adapter never races a generation on the same base: the load waits for the batch.

Attaching the first LoRA adapter rewrites the base's modules in place (PEFT injects its layers, active), so
a generation still running would switch to the adapter half-way through its answer.
"""

from __future__ import annotations

import threading
import time

import openai

from tests.unit.serve.test_serve import _write_run
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.models import activate, hot_load_run, load_registry
from tunesmith.serve.server import ServerThread

KEY = "test-key-0123456789abcdef"
QUESTION = [{"role": "user", "content": "Count to ten."}]


def test_a_load_waits_for_the_batch_holding_the_base(tmp_path, tiny_model_dir, default_tokenizer):
    registry = load_registry([str(tiny_model_dir)])
    run = _write_run(tmp_path, "late", tiny_model_dir, default_tokenizer, 1, "generation")
    base = registry.models[tiny_model_dir.name]
    entered, release = threading.Event(), threading.Event()

    def batch() -> None:
        with activate(base):
            entered.set()
            release.wait(30)

    threading.Thread(target=batch).start()
    assert entered.wait(30)
    loader = threading.Thread(target=hot_load_run, args=(registry, run, "ft:late"))
    loader.start()
    loader.join(0.5)
    assert loader.is_alive() and "ft:late" not in registry.models and base.base.adapters == []
    release.set()
    loader.join(30)
    assert "ft:late" in registry.models and base.base.adapters == ["late"]


def test_loading_while_a_stream_is_in_flight_leaves_its_answer_alone(
    tmp_path, tiny_model_dir, default_tokenizer
):
    registry = load_registry([str(tiny_model_dir)])
    run = _write_run(tmp_path, "late", tiny_model_dir, default_tokenizer, 1, "generation")
    model = registry.models[tiny_model_dir.name].base.model
    forward = model.forward

    def slow_forward(*args, **kwargs):  # ~1 s for the whole answer: time to load in the middle of it
        time.sleep(0.04)
        return forward(*args, **kwargs)

    app = create_app(registry, ServeSettings(api_keys=(KEY,)))
    app.state.api.resolve = lambda model_id: hot_load_run(registry, run, model_id)
    server = ServerThread(app, api_keys=(KEY,)).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        ask = {"model": tiny_model_dir.name, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
        alone = client.chat.completions.create(**ask).choices[0].message.content
        model.forward = slow_forward
        stream = client.chat.completions.create(**ask, stream=True)
        pieces = [next(iter(stream)).choices[0].delta.content or ""]  # the batch is generating now
        late = client.chat.completions.create(model="late", messages=QUESTION, max_tokens=4, temperature=0)
        assert late.model == "late"  # loaded meanwhile, after the batch let go of the base
        pieces += [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        assert "".join(pieces) == alone
    finally:
        server.stop()
