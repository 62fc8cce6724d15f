"""``tunesmith serve default RUN``: the real default model (SmolLM2-135M) and a LoRA run on it, one copy.

The LoRA run is random (lora_B ~ N(0, 0.2) on every linear layer, so it changes the answers); greedy
answers through the official ``openai`` client are compared with stock transformers / PEFT generation.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
import torch

from tunesmith.config import RunConfig, dump_config
from tunesmith.infer.generate import generate_texts
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.models import load_registry
from tunesmith.serve.server import ServerThread

pytestmark = pytest.mark.integration

KEY = "integration-key-0123456789"
MESSAGES = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
MAX_TOKENS = 12


def _write_lora_run(run: Path, model, tokenizer) -> None:
    from peft import LoraConfig, get_peft_model

    run.mkdir()
    (run / "config.yaml").write_text(dump_config(RunConfig(name=run.name, output_dir=str(run.parent))))
    (run / "summary.json").write_text(json.dumps({"task": "generation"}))
    torch.manual_seed(1)  # before get_peft_model: lora_A's init draws from the global RNG too
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    peft_model.save_pretrained(run / "adapter")


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_tokenizer):
    """Reference greedy answers (base, then base + LoRA) from one load; then the server on both."""
    from tunesmith.models.loading import load_causal_lm

    tok = default_tokenizer
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = [tok(text, add_special_tokens=False)["input_ids"]]
    model = load_causal_lm("default").eval()
    reference = {"default": generate_texts(model, tok, ids, max_new_tokens=MAX_TOKENS)[0]}
    run = tmp_path_factory.mktemp("runs") / "smol-lora"
    _write_lora_run(run, model, tok)
    reference["smol-lora"] = generate_texts(model.eval(), tok, ids, max_new_tokens=MAX_TOKENS)[0]
    del model
    registry = load_registry(["default", str(run)])
    with ServerThread(create_app(registry, ServeSettings(api_keys=(KEY,))), api_keys=(KEY,)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        yield SimpleNamespace(registry=registry, client=client, reference=reference)


def test_default_and_its_lora_run_share_one_base(served):
    assert sorted(m.id for m in served.client.models.list().data) == ["default", "smol-lora"]
    models = served.registry.models
    assert len(served.registry.bases) == 1 and models["default"].base is models["smol-lora"].base
    assert (models["default"].kind, models["smol-lora"].kind) == ("base", "adapter")
    assert models["default"].context_length == 8192


@pytest.mark.parametrize("model_id", ["default", "smol-lora"])
def test_greedy_chat_matches_stock_generation(served, model_id):
    resp = served.client.chat.completions.create(
        model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    assert resp.choices[0].message.content.strip() == served.reference[model_id]
    if model_id == "default":
        assert "Paris" in served.reference["default"]
    else:  # the adapter is really applied: the same question gets another answer
        assert served.reference["smol-lora"] != served.reference["default"]
