"""GGUF export for llama.cpp and Ollama: the merged model as one ``model.gguf`` plus an Ollama ``Modelfile``.

    tunesmith export runs/lora-demo --format gguf --gguf-type q8_0 --out exports/gguf
    ollama create my-model -f exports/gguf/Modelfile      # or: llama-cli -m exports/gguf/model.gguf

Written with the ``gguf`` package (llama.cpp's own writer) for the Llama architecture (SmolLM2 is Llama).
Encodings: ``f32`` exact; ``f16`` halves the file; ``q8_0`` stores blocks of 32 int8 values with one f16
scale (about 8.5 bits a weight). Norm vectors stay f32 in every encoding, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, get_tensor_name_map
from gguf.quants import quantize

from tunesmith.errors import ModelError
from tunesmith.export.common import GGUF_TYPES, ExportOptions, Source, load_merged, open_source
from tunesmith.export.gguf_vocab import add_vocab
from tunesmith.export.modelfile import render_modelfile
from tunesmith.io import write_text_atomic
from tunesmith.runs import RunDir

GGUF_NAME = "model.gguf"
_Q8_BLOCK = 32


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters llama.cpp needs for a Llama model, read from a transformers config."""

    vocab_size: int
    context_length: int
    embedding_length: int
    feed_forward_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    head_dim: int
    rope_theta: float
    rms_eps: float


def llama_shape(config: Any) -> LlamaShape:
    """Read and check a Llama config; raise ``ModelError`` for what this writer cannot express."""
    if getattr(config, "model_type", None) != "llama":
        raise ModelError(
            f"GGUF export supports the Llama architecture (e.g. SmolLM2); this model is "
            f"{getattr(config, 'model_type', '?')!r}. Export --format merged and convert it with "
            "llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ModelError(
            f"GGUF export writes plain RoPE; this model uses {rope_type!r} rope scaling. "
            "Export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ModelError("GGUF export supports Llama without attention/MLP biases; this model has biases")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    heads = config.num_attention_heads
    return LlamaShape(
        vocab_size=config.vocab_size,
        context_length=config.max_position_embeddings,
        embedding_length=config.hidden_size,
        feed_forward_length=config.intermediate_size,
        block_count=config.num_hidden_layers,
        head_count=heads,
        head_count_kv=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        rope_theta=float(theta if theta is not None else 10000.0),
        rms_eps=float(config.rms_norm_eps),
    )


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K projection rows from transformers' rotary layout to llama.cpp's.

    transformers rotates the two halves of each head (``rotate_half``); llama.cpp's rope rotates adjacent
    pairs. Interleaving each head's halves makes the two compute the same attention. ``n_head`` is the
    number of heads the rows belong to: attention heads for Q, key/value heads for K.
    """
    rows = weights.shape[0]
    split = weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
    return split.swapaxes(1, 2).reshape(weights.shape)


def encode_tensor(data: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """(array, raw GGML type or None) for one float32 tensor in the requested encoding.

    Vectors (norm weights) stay f32. q8_0 needs rows that split into blocks of 32; a tensor whose rows do
    not falls back to f16, as llama.cpp's converter does.
    """
    if gguf_type == "f32" or data.ndim == 1:
        return data.astype(np.float32), None
    if gguf_type == "q8_0" and data.shape[-1] % _Q8_BLOCK == 0:
        return quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def _is_tied(model: Any) -> bool:
    """True when the output head is the embedding matrix (then GGUF stores no separate ``output``)."""
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    if head is None:
        return True
    return head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()


def rotary_rows(gguf_stem: str, rows: np.ndarray, shape: LlamaShape) -> np.ndarray:
    """``rows`` (a weight, or a LoRA B, of the tensor ``gguf_stem``) in llama.cpp's rotary order: Q's and K's
    are reordered (:func:`permute_qk`), every other tensor's are returned as they are."""
    if gguf_stem.endswith(".attn_q"):
        return permute_qk(rows, shape.head_count)
    if gguf_stem.endswith(".attn_k"):
        return permute_qk(rows, shape.head_count_kv)
    return rows


def _add_tensors(writer: Any, model: Any, shape: LlamaShape, gguf_type: str) -> dict[str, int]:
    """Map, permute, encode and queue every weight; returns a count of tensors per GGML type."""
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, shape.block_count)
    tied = _is_tied(model)
    counts: Counter[str] = Counter()
    for hf_name, tensor in model.state_dict().items():
        if (hf_name == "lm_head.weight" and tied) or "rotary_emb" in hf_name:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_stem = names.get_name(stem)
        if gguf_stem is None:
            raise ModelError(f"no GGUF name for the tensor {hf_name!r}; this Llama variant is not supported")
        data = rotary_rows(gguf_stem, tensor.detach().to(torch.float32).cpu().numpy(), shape)
        array, raw_type = encode_tensor(data, gguf_type)
        writer.add_tensor(f"{gguf_stem}.{suffix}", array, raw_dtype=raw_type)
        counts[raw_type.name if raw_type is not None else str(array.dtype)] += 1
    return dict(sorted(counts.items()))


def _add_hparams(writer: Any, shape: LlamaShape) -> None:
    writer.add_vocab_size(shape.vocab_size)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.embedding_length)
    writer.add_feed_forward_length(shape.feed_forward_length)
    writer.add_block_count(shape.block_count)
    writer.add_head_count(shape.head_count)
    writer.add_head_count_kv(shape.head_count_kv)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    if shape.head_dim * shape.head_count != shape.embedding_length:
        # llama.cpp assumes head_dim = embedding / heads unless told otherwise
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)


def write_gguf(model: Any, tokenizer: Any, path: Path, gguf_type: str, name: str) -> dict[str, Any]:
    """Write ``model`` (a merged transformers Llama) and its tokenizer to one GGUF file at ``path``."""
    if gguf_type not in GGUF_TYPES:
        raise ModelError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    shape = llama_shape(model.config)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[gguf_type]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, shape)
        vocab = add_vocab(writer, tokenizer, shape.vocab_size)
        counts = _add_tensors(writer, model, shape, gguf_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"gguf_type": gguf_type, "tensor_types": counts, "tied_embeddings": _is_tied(model), **vocab}


def export_gguf(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """``model.gguf`` (the merged model) and an Ollama ``Modelfile`` next to it."""
    model, tokenizer = load_merged(source)
    details = write_gguf(model, tokenizer, out / GGUF_NAME, options.gguf_type, name=source.cfg.name)
    modelfile, chatml = render_modelfile(tokenizer, source.cfg.data.system_prompt, f"./{GGUF_NAME}")
    write_text_atomic(out / "Modelfile", modelfile)
    return {"gguf_file": GGUF_NAME, **details, "modelfile_template": "chatml" if chatml else None}


def weights_fingerprint(folder: Path) -> str:
    """What identifies a model's weights on disk: its files' names, sizes and modification times."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_gguf(model_id: str, source: str, gguf_type: str) -> Path:
    """The GGUF file of ``source`` (a run dir, LoRA merged in; a model dir; ``default``), exported on first
    use to ``<tunesmith home>/cache/gguf``, cached by its weights files (for ``serve --engine llama.cpp``)."""
    from tunesmith.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

    run = RunDir(Path(source))
    is_run = run.config.is_file()
    weights = run.saved() if is_run else resolve_model_path(source)
    if not isinstance(weights, Path):
        raise ModelError(f"{source}: --engine llama.cpp serves local models only (found no directory)")

    def write(partial: Path) -> None:
        if is_run:
            model, tokenizer = load_merged(open_source(source))
        else:
            model, tokenizer = load_causal_lm(source, "float32"), load_tokenizer(source)
        write_gguf(model, tokenizer, partial, gguf_type, name=model_id)

    return cache_file(f"{model_id}-{weights_fingerprint(weights)}-{gguf_type}", GGUF_NAME, write)


def cache_file(key: str, name: str, write: Callable[[Path], Any]) -> Path:
    """``<tunesmith home>/cache/gguf/<key>/<name>``, written by ``write(temp path)`` the first time."""
    from tunesmith.models.loading import tunesmith_home

    folder = tunesmith_home() / "cache" / "gguf" / key
    path = folder / name
    if path.is_file():
        return path
    print(f"tunesmith: exporting {key} to GGUF for llama.cpp (once; cached in {folder})")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.{os.getpid()}.tmp"
    write(partial)
    partial.replace(path)  # atomic: a crash leaves no half-written file to be trusted next time
    return path
