"""GGUF export of the real default model (SmolLM2-135M) with a LoRA adapter, read back by transformers.

Measured (max |logit error| over one chat prompt, vs the merged fp32 model; logits reach ~37):
f32 0 (exact); f16 0.042 abs / 1.1e-3 relative, top-1 100 %; q8_0 1.97 abs / 5.3e-2 relative, top-1 96 %,
mean KL 3.3e-3 -- and the q8_0 file reproduces an in-memory Q8_0 rounding of the same weights exactly, so
all of that error is quantization, none of it conversion. Asserted here for q8_0 (the lossiest type; reading a
GGUF back through transformers takes ~20 s, so f32/f16 are covered by the tiny-model unit tests):
relative error < 0.1 and top-1 agreement >= 90 %.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.config import RunConfig, dump_config
from tunesmith.export import MANIFEST, export
from tunesmith.export.gguf_export import GGUF_NAME
from tunesmith.runs import load_trained

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, default_tokenizer) -> Path:
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.loading import load_causal_lm

    run = tmp_path_factory.mktemp("runs") / "smol-lora"
    run.mkdir()
    cfg = RunConfig(name=run.name, output_dir=str(run.parent), data={"system_prompt": "Be brief."})
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "summary.json").write_text(json.dumps({"data_hashes": {"train.jsonl": "0" * 64}}))
    model = get_peft_model(
        load_causal_lm("default"), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    model.save_pretrained(run / "adapter")
    default_tokenizer.save_pretrained(run / "adapter")
    return run


@pytest.fixture(scope="module")
def prompt_ids(default_tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "What is the capital of France? Answer in 12 words."}]
    text = default_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return default_tokenizer(text + "The capital of France is Paris.", return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def peft_logits(run_dir, prompt_ids) -> torch.Tensor:
    """The unmerged PEFT model's logits (the merged model is within 2e-4 of these on this prompt)."""
    model, _, _ = load_trained(run_dir)
    with torch.no_grad():
        return model(prompt_ids).logits


@pytest.fixture(scope="module")
def gguf_dir(run_dir, tmp_path_factory) -> Path:
    return export(run_dir, "gguf", tmp_path_factory.mktemp("gguf") / "q8_0", gguf_type="q8_0")


def test_default_model_gguf_round_trip(gguf_dir, peft_logits, prompt_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    with torch.no_grad():
        logits = model(prompt_ids).logits
    rel = ((logits - peft_logits).abs().max() / peft_logits.abs().max()).item()
    top1 = (logits.argmax(-1) == peft_logits.argmax(-1)).float().mean().item()
    assert rel < 0.1 and top1 >= 0.9, (rel, top1)


def test_default_model_gguf_tokenizer_and_files(gguf_dir, default_tokenizer):
    from transformers import AutoTokenizer

    out = gguf_dir
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=GGUF_NAME)
    text = "<|im_start|>user\nPrices: 12.50 € or $3,999 — ok?\n\tdone<|im_end|>\n"
    assert tokenizer(text).input_ids == default_tokenizer(text).input_ids
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base_model"]["name"] == "default"
    assert set(manifest["base_model"]["weights_sha256"]) == {"model.safetensors"}
    assert manifest["details"]["tensor_types"] == {"Q8_0": 211, "float32": 61}
    assert 'SYSTEM """Be brief."""' in (out / "Modelfile").read_text()
