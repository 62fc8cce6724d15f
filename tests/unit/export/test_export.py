"""Export formats on a tiny Llama run built in tmp: merged, adapter, GGUF + Modelfile, int8; manifest, CLI.

Tolerances (max |logit error| / max |reference logit|, measured on this tiny model):
merged vs PEFT ~5e-7 (asserted 1e-5); GGUF f32 0 (asserted 1e-6), f16 ~5e-4 (2e-3), q8_0 ~1e-2 (3e-2);
int8 ~2e-2 (5e-2); smoothing the head in fp32 ~2e-7 (1e-5).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_llama
from tunesmith.config import RunConfig, dump_config
from tunesmith.errors import ConfigError, ModelError, RunError
from tunesmith.export import FORMATS, MANIFEST, export
from tunesmith.export.gguf_export import GGUF_NAME, llama_shape, permute_qk
from tunesmith.export.int8 import INT8_DYNAMIC, WEIGHT_ONLY, load_int8, quantize_weight, smoothed_head
from tunesmith.export.modelfile import CHATML_TEMPLATE, chatml_default_system, render_modelfile
from tunesmith.runs import file_sha256, load_trained

SAMPLE = "<|im_start|>user\nHello there, 12345 apples!\n  ünïcode ✓ tabs\t<|im_end|>\n<|im_start|>assistant\n"
DATA_HASHES = {"train.jsonl": "ab" * 32}
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _write_run(run_dir: Path, base_dir: Path, system_prompt: str | None = None) -> None:
    cfg = RunConfig(
        name=run_dir.name,
        output_dir=str(run_dir.parent),
        model={"name": str(base_dir)},
        data={"system_prompt": system_prompt},
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "data_report.json").write_text("{}\n")
    (run_dir / "summary.json").write_text(json.dumps({"data_hashes": DATA_HASHES}))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, default_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("base")
    make_tiny_llama(len(default_tokenizer)).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, base_dir, default_tokenizer) -> Path:
    """A LoRA run whose lora_B is random and non-zero, so merging really changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("runs") / "lora"
    _write_run(run, base_dir, system_prompt="Answer in one sentence.")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    model.save_pretrained(run / "adapter")
    default_tokenizer.save_pretrained(run / "adapter")
    return run


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, base_dir, default_tokenizer) -> Path:
    run = tmp_path_factory.mktemp("runs") / "full"
    _write_run(run, base_dir)
    make_tiny_llama(len(default_tokenizer), seed=3).save_pretrained(run / "model")
    default_tokenizer.save_pretrained(run / "model")
    return run


@pytest.fixture(scope="module")
def sample_ids(default_tokenizer) -> torch.Tensor:
    return default_tokenizer(SAMPLE, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def peft_logits(adapter_run, sample_ids) -> torch.Tensor:
    model, _, _ = load_trained(adapter_run, merge=False)
    assert hasattr(model, "peft_config")
    with torch.no_grad():
        return model(sample_ids).logits


@pytest.fixture(scope="module")
def exports(adapter_run, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    paths = {
        "merged": export(adapter_run, "merged", out / "merged"),
        "int8": export(adapter_run, "int8", out / "int8"),
    }
    for kind in ("f32", "f16", "q8_0"):
        paths[kind] = export(adapter_run, "gguf", out / kind, gguf_type=kind)
    return paths


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


# ---------------------------------------------------------------- merged / adapter


def test_merged_loads_in_stock_transformers_and_matches_peft(exports, peft_logits, base_dir, sample_ids):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exports["merged"]
    merged = AutoModelForCausalLM.from_pretrained(out)
    logits = _logits(merged, sample_ids)
    assert _rel_err(logits, peft_logits) < 1e-5
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(base_dir), sample_ids)
    assert (base_logits - peft_logits).abs().max() > 0.1  # the LoRA really changed the model
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "chat_template.jinja"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not any("lora" in key for key in merged.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>" in tokenizer.chat_template
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_merged_of_full_model_run_is_exact_copy(model_run, tmp_path, sample_ids):
    from transformers import AutoModelForCausalLM

    out = export(model_run, "merged", tmp_path / "merged")
    original = AutoModelForCausalLM.from_pretrained(model_run / "model")
    copy = AutoModelForCausalLM.from_pretrained(out)
    for (k1, v1), (k2, v2) in zip(original.state_dict().items(), copy.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert json.loads((out / MANIFEST).read_text())["details"]["merged_from"] == "model"


def test_adapter_export_is_a_loadable_copy(adapter_run, base_dir, tmp_path, peft_logits, sample_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = export(adapter_run, "adapter", tmp_path / "adapter")
    for src in (adapter_run / "adapter").iterdir():
        assert file_sha256(out / src.name) == file_sha256(src)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    assert torch.equal(_logits(model, sample_ids), peft_logits)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["details"]["r"] == 4 and manifest["details"]["lora_alpha"] == 8
    assert manifest["base_model"]["name"] == str(base_dir)
    assert manifest["base_model"]["weights_sha256"] == {
        "model.safetensors": file_sha256(base_dir / "model.safetensors")
    }


def test_adapter_export_of_full_model_run_is_refused(model_run, tmp_path):
    with pytest.raises(RunError, match="--format merged"):
        export(model_run, "adapter", tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- GGUF


def test_permute_qk_matches_llama_cpp_layout_and_transformers_inverts_it():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rows = np.arange(8, dtype=np.float32)[:, None]  # one column: row ids
    # 2 heads of 4 rows: each head's halves [0,1 | 2,3] interleave to 0,2,1,3
    assert permute_qk(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    weights = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    undo = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 2})
    for name, heads in (("blk.0.attn_q.weight", 6), ("blk.0.attn_k.weight", 2)):
        restored = undo.process(permute_qk(weights, heads), name).weights
        assert np.array_equal(restored, weights)


@pytest.fixture(scope="module")
def merged_logits(exports, sample_ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(exports["merged"]), sample_ids)


@pytest.fixture(scope="module")
def gguf_config(exports):
    """The config transformers reads from the f32 file's metadata (reading it costs seconds: done once)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(exports["f32"], gguf_file=GGUF_NAME)


def test_gguf_metadata_reads_back_as_the_model_config(gguf_config, exports):
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained(exports["merged"])
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(gguf_config, key) == getattr(original, key)
    assert gguf_config.num_key_value_heads == 2 and gguf_config.max_position_embeddings == 512
    assert gguf_config.head_dim == 16 and gguf_config.tie_word_embeddings is True
    assert gguf_config.rms_norm_eps == pytest.approx(original.rms_norm_eps)


@pytest.mark.parametrize(("kind", "bound"), [("f32", 1e-6), ("f16", 2e-3), ("q8_0", 3e-2)])
def test_gguf_round_trip_logits(exports, gguf_config, merged_logits, kind, bound, sample_ids):
    from transformers import AutoModelForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(
        exports[kind], gguf_file=GGUF_NAME, config=gguf_config, dtype=torch.float32
    )
    assert _rel_err(_logits(gguf_model, sample_ids), merged_logits) < bound


def test_gguf_tokenizer_round_trip(exports, default_tokenizer):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exports["f16"], gguf_file=GGUF_NAME)
    for text in (SAMPLE, "plain text, no specials", " leading space\n\nnewlines"):
        assert tokenizer(text).input_ids == default_tokenizer(text).input_ids
    assert tokenizer.chat_template == default_tokenizer.chat_template
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)


def _fields(path: Path) -> tuple[dict, dict]:
    """(metadata, {tensor: GGML type name}) via transformers' fast reader (gguf's takes seconds)."""
    from gguf import GGMLQuantizationType
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    metadata, _ = read_gguf_metadata(str(path), arrays)
    header = GgufHeader.from_file(str(path))
    return metadata, {t.name: GGMLQuantizationType(t.ggml_type).name for t in header.tensors}


def test_gguf_metadata_and_tensor_types(exports, default_tokenizer):
    fields, tensors = _fields(exports["q8_0"] / GGUF_NAME)
    expected = {
        "general.architecture": "llama",
        "general.name": "lora",
        "general.file_type": 7,  # MOSTLY_Q8_0
        "llama.context_length": 512,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.block_count": 2,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.rope.freq_base": 10000.0,
        "llama.vocab_size": len(default_tokenizer),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": default_tokenizer.chat_template,
    }
    assert {k: fields[k] for k in expected} == expected
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and types[:3] == [3, 3, 3]
    assert tokens[default_tokenizer.convert_tokens_to_ids("Ġapples")] == "Ġapples"
    assert types[default_tokenizer.convert_tokens_to_ids("Ġapples")] == 1  # NORMAL
    assert fields["tokenizer.ggml.merges"][:2] == ["Ġ t", "Ġ a"]
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert len(tensors) == 2 + 9 * 2  # token_embd + output_norm + 9 per block
    assert tensors["blk.0.attn_norm.weight"] == "F32" and tensors["output_norm.weight"] == "F32"
    assert tensors["token_embd.weight"] == "Q8_0" and tensors["blk.1.ffn_down.weight"] == "Q8_0"
    _, f16_tensors = _fields(exports["f16"] / GGUF_NAME)
    assert f16_tensors["blk.0.attn_q.weight"] == "F16" and f16_tensors["blk.0.ffn_norm.weight"] == "F32"


def test_gguf_refuses_what_it_cannot_write():
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rms_norm_eps": 1e-6}
    with pytest.raises(ModelError, match="Llama architecture"):
        llama_shape(SimpleNamespace(**{**base, "model_type": "gpt2"}))
    with pytest.raises(ModelError, match="'llama3' rope scaling"):
        llama_shape(SimpleNamespace(**base, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}))


def test_modelfile_uses_run_system_prompt(exports):
    text = (exports["f16"] / "Modelfile").read_text()
    assert text == (
        "# Written by tunesmith. Use: ollama create NAME -f Modelfile\n"
        "FROM ./model.gguf\n\n"
        f'TEMPLATE """{CHATML_TEMPLATE}"""\n'
        'SYSTEM """Answer in one sentence."""\n'
        'PARAMETER stop "<|im_end|>"\n'
    )
    assert "{{ .Role }}\n{{ .Content }}<|im_end|>\n" in CHATML_TEMPLATE


def test_modelfile_falls_back_to_template_default_system(default_tokenizer):
    assert chatml_default_system(default_tokenizer) == (True, SMOL_SYSTEM)
    text, chatml = render_modelfile(default_tokenizer, None, "./model.gguf")
    assert chatml and f'SYSTEM """{SMOL_SYSTEM}"""\n' in text


def test_modelfile_without_chatml_has_no_template():
    class Llama2Style:
        eos_token = "</s>"

        def apply_chat_template(self, messages, **kwargs):
            return "".join(f"[INST] {m['content']} [/INST]" for m in messages)

    text, chatml = render_modelfile(Llama2Style(), "Be kind.", "./model.gguf")
    assert not chatml and "TEMPLATE" not in text
    assert 'SYSTEM """Be kind."""\n' in text and 'PARAMETER stop "</s>"\n' in text


# ---------------------------------------------------------------- int8


def test_quantize_weight_is_symmetric_per_row():
    weight = torch.tensor([[1.27, -0.635, 0.0], [-2.54, 0.01, 2.54]])
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -64, 0], [-127, 0, 127]]
    assert torch.allclose(scale, torch.tensor([0.01, 0.02]))


def test_smoothing_the_head_keeps_the_fp32_function(adapter_run, default_tokenizer, sample_ids):
    merged, _, _ = load_trained(adapter_run, merge=True)
    smoothed = copy.deepcopy(merged)
    new = smoothed_head(merged, default_tokenizer, "lm_head", "model.norm")
    with torch.no_grad():
        smoothed.lm_head.weight = torch.nn.Parameter(new["lm_head.weight"])  # unties it from the embedding
        smoothed.model.norm.weight.copy_(new["model.norm.weight"])
    assert not torch.allclose(new["model.norm.weight"], merged.model.norm.weight)
    assert _rel_err(_logits(smoothed, sample_ids), _logits(merged, sample_ids)) < 1e-5


def test_int8_export_loads_with_exact_weights_and_close_logits(
    exports, adapter_run, default_tokenizer, sample_ids
):
    out = exports["int8"]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.int8.safetensors"]
    kernels = json.loads((out / "int8_config.json").read_text())["kernels"]
    assert kernels.pop("lm_head") == INT8_DYNAMIC
    assert len(kernels) == 2 * 7 and set(kernels.values()) == {WEIGHT_ONLY}
    model, tokenizer = load_int8(out)
    merged, _, _ = load_trained(adapter_run, merge=True)
    # weight-only layers: the int8 weights, expanded to fp16
    q, scale = quantize_weight(merged.model.layers[1].mlp.down_proj.weight)
    got = model.model.layers[1].mlp.down_proj.weight().float()
    assert torch.allclose(got, (q.float() * scale[:, None]).half().float())
    # the head: exactly the int8 rounding of the smoothed head weight
    head_q, head_scale = quantize_weight(
        smoothed_head(merged, default_tokenizer, "lm_head", "model.norm")["lm_head.weight"]
    )
    assert isinstance(model.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    assert torch.equal(model.lm_head.weight().int_repr(), head_q)
    assert torch.allclose(model.lm_head.weight().q_per_channel_scales().float(), head_scale)
    assert torch.equal(model.model.embed_tokens.weight, merged.model.embed_tokens.weight)
    assert _rel_err(_logits(model, sample_ids), _logits(merged, sample_ids)) < 5e-2
    generated = model.generate(sample_ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == sample_ids.shape[1] + 3 and tokenizer.eos_token == "<|im_end|>"


def test_load_int8_falls_back_to_fp32_where_torch_lacks_the_kernels(exports, monkeypatch, sample_ids):
    from safetensors.torch import load_file

    import tunesmith.export.int8 as int8

    monkeypatch.setattr(int8, "_dynamic_linear", lambda *args: None)
    with pytest.warns(UserWarning, match="as fp32"):
        model, _ = int8.load_int8(exports["int8"])
    stored = load_file(exports["int8"] / "model.int8.safetensors")
    expected = stored["lm_head.weight_int8"].float() * stored["lm_head.weight_scale"][:, None]
    assert type(model.lm_head) is torch.nn.Linear and torch.equal(model.lm_head.weight, expected)
    assert _logits(model, sample_ids).isfinite().all()


def test_load_int8_rejects_other_folders(exports):
    with pytest.raises(ModelError, match="not an int8 export"):
        load_int8(exports["merged"])


# ---------------------------------------------------------------- manifest, guard, CLI


def test_manifest_contents(exports, adapter_run, base_dir):
    import tunesmith

    out = exports["q8_0"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "gguf" and manifest["options"] == {"gguf_type": "q8_0"}
    assert manifest["run_dir"] == str(adapter_run.resolve()) and manifest["run_kind"] == "adapter"
    assert manifest["base_model"]["weights_sha256"]["model.safetensors"] == file_sha256(
        base_dir / "model.safetensors"
    )
    assert manifest["data_hashes"] == DATA_HASHES
    assert manifest["tunesmith_version"] == tunesmith.__version__
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(manifest["created_at"])
    assert dt.timedelta(0) <= age < dt.timedelta(hours=1)
    files = {p.name: file_sha256(p) for p in out.iterdir() if p.name != MANIFEST}
    assert manifest["files"] == files and set(files) == {"model.gguf", "Modelfile"}
    assert manifest["details"]["tensor_types"] == {"Q8_0": 15, "float32": 5}


def test_out_dir_guard(adapter_run, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="--force"):
        export(adapter_run, "adapter", target)
    assert (target / "notes.txt").read_text() == "mine"
    export(adapter_run, "adapter", target, force=True)
    assert not (target / "notes.txt").exists() and (target / MANIFEST).exists()
    export(adapter_run, "merged", target)  # a previous export is replaced without --force
    assert json.loads((target / MANIFEST).read_text())["format"] == "merged"
    for bad in (adapter_run, adapter_run.parent, adapter_run / "adapter" / "x"):
        with pytest.raises(RunError, match="overlaps"):
            export(adapter_run, "adapter", bad, force=True)
    assert (adapter_run / "adapter" / "adapter_config.json").exists()


def test_bad_arguments(adapter_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format"):
        export(adapter_run, "onnx", tmp_path / "x")
    with pytest.raises(ConfigError, match="q4_0"):
        export(adapter_run, "gguf", tmp_path / "x", gguf_type="q4_0")
    with pytest.raises(RunError, match="not a run directory"):
        export(tmp_path, "merged", tmp_path / "x")
    unfinished = tmp_path / "runs" / "half"
    _write_run(unfinished, tmp_path)
    with pytest.raises(RunError, match="--resume"):
        export(unfinished, "merged", tmp_path / "x")


def test_cli_export(adapter_run, tmp_path, capsys):
    from tunesmith.export.cli import add_parser

    parser = argparse.ArgumentParser(prog="tunesmith")
    add_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(["export", str(adapter_run), "--format", "adapter", "--out", str(out)])
    assert args.gguf_type == "f16" and args.force is False
    assert args.func(args) == 0
    assert f"exported adapter to {out}" in capsys.readouterr().out
    assert set(FORMATS) == {"merged", "adapter", "gguf", "gguf-lora", "int8"}
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(adapter_run), "--format", "onnx", "--out", str(out)])
