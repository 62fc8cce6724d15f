"""QLoRA on a tiny model: 4-bit NF4 base (bitsandbytes CPU kernels), LoRA on top, the same losses as LoRA on
the dequantized fp32 base (computed here, on this machine), reload onto a 4-bit base; and the message when
bitsandbytes cannot be imported. Gradient parity per bitsandbytes path: test_qlora_grads.py."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import make_tiny_llama
from tests.unit.methods.test_methods import PAD, VOCAB, _data
from tunesmith.config import LoraMethod, QloraMethod, RunConfig, TrainConfig, dump_config
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


def dequantized_base(quantized, base_dir):
    """The fp32 model at ``base_dir`` with each linear layer that ``quantized`` holds in 4 bits replaced by
    its dequantized weights: the base QLoRA effectively trains on, in plain PyTorch."""
    import bitsandbytes as bnb

    reference = load_causal_lm(str(base_dir))
    layers = {n: m for n, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(layers) == 14  # 7 projections x 2 blocks; the tied head stays fp32
    for name, module in reference.named_modules():
        if name in layers:
            weight = layers[name].weight
            module.weight.data.copy_(bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float())
    return reference


def copy_trainable(source, target) -> None:
    """Give ``target`` the trainable (LoRA) weights of ``source``; both have the same parameter names."""
    target_params = dict(target.named_parameters())
    trainable = [n for n, p in source.named_parameters() if p.requires_grad]
    assert trainable and {n for n, p in target.named_parameters() if p.requires_grad} == set(trainable)
    for name, param in source.named_parameters():
        if param.requires_grad:
            target_params[name].data.copy_(param.data)


def train_losses(model, run_dir) -> list[float]:
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, scheduler="constant", log_every=1, precision="fp32")
    train_loop(model, _data(), None, cfg, seed=0, run_dir=run_dir, pad_id=PAD)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


LOSS_ATOL = 1e-5
"""QLoRA vs LoRA on its dequantized base, same machine, both fp32: the same matmuls on the same weights
(bit-identical on an AVX512 Xeon). A gradient missing through the base (bitsandbytes' gemv_4bit path, fixed)
moved the second loss by 6e-3."""


def test_qlora_trains_lora_on_a_4bit_base_and_reloads(tmp_path, base_dir, default_tokenizer):
    pytest.importorskip("bitsandbytes")
    method = QloraMethod(r=4, alpha=8, double_quant=True)
    model = load_causal_lm(str(base_dir), **load_options(method))
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    reference = dequantized_base(model, base_dir)
    model = prepare_model(model, method)
    trainable, _ = count_parameters(model)
    assert trainable == 2 * 4096  # the same LoRA parameters as on the fp32 base (see test_train_loop)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    reference = prepare_model(reference, LoraMethod(r=4, alpha=8))
    copy_trainable(model, reference)  # the same LoRA init
    # An eval pass first: on AVX512-BF16 CPUs it used to switch bitsandbytes to gemv_4bit (bf16, no gradient
    # through the base) for the rest of training (qlora.keep_differentiable_kernels).
    start = evaluate_loss(model, _data(), 8, PAD, "cpu")
    assert start == pytest.approx(evaluate_loss(reference, _data(), 8, PAD, "cpu"), abs=LOSS_ATOL)
    (tmp_path / "qlora").mkdir()
    (tmp_path / "reference").mkdir()
    losses = train_losses(model, tmp_path / "qlora")
    assert len(losses) == 6
    assert losses == pytest.approx(train_losses(reference, tmp_path / "reference"), abs=LOSS_ATOL)
    assert evaluate_loss(model, _data(), 8, PAD, "cpu") < start - 0.01

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_cfg = RunConfig.model_validate({"model": {"name": str(base_dir)}, "method": method.model_dump()})
    (run_dir / "config.yaml").write_text(dump_config(run_cfg))
    save_trained(model, default_tokenizer, run_dir)
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    loaded, _, _ = load_trained(run_dir)
    # load_trained keeps the training kernels too: without that, the eval forward below would repack the
    # reloaded layers for bitsandbytes' bf16 gemv on AVX512-BF16 CPUs (logits ~1e-3 off the trained model).
    ids = torch.tensor([[5, 50, 60, 70, 80]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)
