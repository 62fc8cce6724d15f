"""QLoRA on a tiny model: 4-bit NF4 base (bitsandbytes CPU kernels), LoRA on top, exact losses, reload onto a
4-bit base; and the message when bitsandbytes cannot be imported."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.methods.test_methods import PAD, VOCAB, _data
from tunesmith.config import QloraMethod, RunConfig, TrainConfig, dump_config
from tunesmith.errors import ModelError
from tunesmith.methods import count_parameters, load_options, prepare_model
from tunesmith.models.loading import load_causal_lm
from tunesmith.runs import load_trained, save_trained
from tunesmith.train.loop import evaluate_loss, train_loop


def test_missing_bitsandbytes_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(
        ModelError, match=r"needs bitsandbytes.*pip install 'tunesmith\[qlora\]'.*method.name: lora"
    ):
        load_options(QloraMethod())


def test_qlora_refuses_a_full_precision_base():
    with pytest.raises(ModelError, match="not 4-bit"):
        prepare_model(make_tiny_llama(VOCAB), QloraMethod(r=4))


@pytest.fixture
def base_dir(tmp_path, default_tokenizer):
    path = tmp_path / "base"
    make_tiny_llama(VOCAB).save_pretrained(path, safe_serialization=True)
    default_tokenizer.save_pretrained(path)
    return path


def test_qlora_trains_lora_on_a_4bit_base_and_reloads(tmp_path, base_dir, default_tokenizer):
    pytest.importorskip("bitsandbytes")
    method = QloraMethod(r=4, alpha=8, double_quant=True)
    model = load_causal_lm(str(base_dir), **load_options(method))
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    model = prepare_model(model, method)
    trainable, _ = count_parameters(model)
    assert trainable == 2 * 4096  # the same LoRA parameters as on the fp32 base (see test_train_loop)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    start = evaluate_loss(model, _data(), 8, PAD, "cpu")
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, scheduler="constant", log_every=1)
    train_loop(model, _data(), None, cfg, seed=0, run_dir=tmp_path, pad_id=PAD)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    # Regression values: bitsandbytes 0.50.2 CPU NF4 kernels (seed 0); the fp32 base gives 4.8639579 first.
    assert losses[:3] == pytest.approx(EXPECTED, abs=1e-4)
    assert evaluate_loss(model, _data(), 8, PAD, "cpu") < start - 0.01

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_cfg = RunConfig.model_validate({"model": {"name": str(base_dir)}, "method": method.model_dump()})
    (run_dir / "config.yaml").write_text(dump_config(run_cfg))
    save_trained(model, default_tokenizer, run_dir)
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    loaded, _, _ = load_trained(run_dir)
    ids = torch.tensor([[5, 50, 60, 70, 80]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)


EXPECTED = [4.8653126, 4.9051208, 4.9232745]
