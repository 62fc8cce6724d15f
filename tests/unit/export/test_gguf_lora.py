"""PEFT LoRA adapters as GGUF LoRA adapters: the file's layout and scaling, and what it refuses.

That llama.cpp computes the PEFT model's logits from it is checked in ``tests/unit/serve/test_llamacpp.py``
(it needs the ``llamacpp`` extra).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from tests.conftest import make_tiny_llama
from tunesmith.errors import ModelError
from tunesmith.export.gguf_export import llama_shape, permute_qk
from tunesmith.export.gguf_lora import write_gguf_lora


def _adapter(tmp_path, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = make_tiny_llama(64)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora)
    peft = get_peft_model(model, config)
    peft.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", peft, llama_shape(model.config)


def _read(path):
    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return fields, {t.name: np.asarray(t.data) for t in reader.tensors}


def test_adapter_file_holds_each_pair_with_llama_cpp_names_and_rotary_order(tmp_path):
    adapter, peft, shape = _adapter(tmp_path)
    details = write_gguf_lora(adapter, shape, tmp_path / "adapter.gguf", name="tiny")
    fields, tensors = _read(tmp_path / "adapter.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0 and fields["general.architecture"] == "llama"
    assert details == {"adapted_weights": 14, "lora_alpha": 8.0}  # 7 linear layers x 2 blocks
    assert len(tensors) == 28
    layer = peft.base_model.model.model.layers[1]
    q_proj = layer.self_attn.q_proj
    q_a, q_b = q_proj.lora_A["default"].weight, q_proj.lora_B["default"].weight
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight.lora_a"], q_a.detach().numpy())
    want_b = permute_qk(q_b.detach().numpy(), shape.head_count)  # rows reordered as the base's q rows are
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight.lora_b"], want_b)
    assert not np.array_equal(want_b, q_b.detach().numpy())
    k_b = layer.self_attn.k_proj.lora_B["default"].weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight.lora_b"], permute_qk(k_b, shape.head_count_kv))
    down_b = layer.mlp.down_proj.lora_B["default"].weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.1.ffn_down.weight.lora_b"], down_b)  # not reordered


def test_rslora_scaling_is_written_as_the_alpha_llama_cpp_divides_by_r(tmp_path):
    adapter, _, shape = _adapter(tmp_path, use_rslora=True)
    write_gguf_lora(adapter, shape, tmp_path / "adapter.gguf", name="tiny")
    fields, _ = _read(tmp_path / "adapter.gguf")
    # PEFT scales rsLoRA by alpha / sqrt(r); llama.cpp by alpha' / r: alpha' = alpha * sqrt(r)
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0 * math.sqrt(4))


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("use_dora", True, "DoRA"),
        ("alpha_pattern", {"q_proj": 32}, "alpha_pattern"),
        ("modules_to_save", ["lm_head"], "fully trained modules"),
    ],
)
def test_what_one_adapter_file_cannot_express_is_refused_by_name(tmp_path, key, value, says):
    adapter, _, shape = _adapter(tmp_path)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, key: value}))
    with pytest.raises(ModelError, match=says):
        write_gguf_lora(adapter, shape, tmp_path / "adapter.gguf", name="tiny")
    assert not (tmp_path / "adapter.gguf").exists()


def test_gguf_lora_export_writes_the_unmerged_base_the_adapter_and_a_modelfile_naming_both(
    tmp_path, default_tokenizer
):
    from tests.unit.serve.tiny_runs import write_chat_run
    from tunesmith.export import export

    run_dir = write_chat_run(tmp_path, default_tokenizer, [{"messages": []}])
    out = export(run_dir, "gguf-lora", tmp_path / "out", gguf_type="f32")
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and modelfile.endswith("ADAPTER ./adapter.gguf\n")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "gguf-lora" and manifest["options"] == {"gguf_type": "f32"}
    assert manifest["details"]["adapted_weights"] == 4  # q_proj and v_proj in 2 blocks
    _, tensors = _read(out / "model.gguf")
    base = make_tiny_llama(len(default_tokenizer))  # write_chat_run's base: the same seed
    want = base.model.layers[0].self_attn.v_proj.weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.0.attn_v.weight"], want)  # the base itself, not merged


def test_gguf_lora_export_of_a_full_fine_tune_points_to_gguf(tmp_path, default_tokenizer):
    from tests.unit.serve.tiny_runs import write_chat_run
    from tunesmith.errors import RunError
    from tunesmith.export import export

    run_dir = write_chat_run(tmp_path, default_tokenizer, [{"messages": []}])
    (run_dir / "adapter").rename(run_dir / "model")
    with pytest.raises(RunError, match="use --format gguf"):
        export(run_dir, "gguf-lora", tmp_path / "out")
