"""A PEFT LoRA adapter as a GGUF LoRA adapter file, which llama.cpp applies on top of the base model's GGUF.

    tunesmith export runs/lora-demo --format gguf-lora --out exports/gguf-lora
    ollama create my-model -f exports/gguf-lora/Modelfile    # FROM ./model.gguf + ADAPTER ./adapter.gguf
    llama-cli -m exports/gguf-lora/model.gguf --lora exports/gguf-lora/adapter.gguf

Against ``--format gguf`` (the merged model): the base's GGUF is shared by every run on it, and each run
adds a small file; llama.cpp pays for it in decoding (~5 ms a step: default model, r 32, all linear layers).

The file holds, for each adapted weight, ``<gguf name>.lora_a`` (r x in) and ``.lora_b`` (out x r), and
``adapter.lora.alpha``: llama.cpp adds ``alpha / r * B @ A`` to the weight's output, PEFT's
``lora_alpha / r`` scaling (rsLoRA's ``alpha / sqrt(r)`` is written as ``alpha * sqrt(r)``). Q and K rows go
through the same rotary reordering as the base weights (:func:`~tunesmith.export.gguf_export.rotary_rows`):
only ``lora_b``'s rows, since A's rows are rank directions. Written f32: an adapter is small (the default
model's r 16 all-linear adapter: 4.9M values, 20 MB), and exact.

Not expressible, so refused with the reason (serve or export the merged model instead): DoRA, per-module
ranks or alphas (``rank_pattern`` / ``alpha_pattern``: one alpha per file), fully trained extra modules
(``modules_to_save``), adapters on the embeddings or the output head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import MODEL_ARCH, get_tensor_name_map
from safetensors.numpy import load_file
from transformers import AutoConfig

from tunesmith.errors import ModelError, RunError
from tunesmith.export.common import ExportOptions, Source
from tunesmith.export.gguf_export import (
    GGUF_NAME,
    LlamaShape,
    cache_file,
    llama_shape,
    rotary_rows,
    weights_fingerprint,
    write_gguf,
)
from tunesmith.export.modelfile import render_modelfile
from tunesmith.io import write_text_atomic
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.runs import RunDir

ADAPTER_NAME = "adapter.gguf"

_PEFT_PREFIX = "base_model.model."


def lora_alpha(adapter_dir: Path) -> float:
    """The alpha llama.cpp must scale by (``alpha / r``) to compute what PEFT computes; refuses what one
    GGUF adapter file cannot express."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    refusals = {
        "use_dora": "DoRA (a learned magnitude per weight)",
        "rank_pattern": "per-module ranks (rank_pattern)",
        "alpha_pattern": "per-module alphas (alpha_pattern)",
        "modules_to_save": f"fully trained modules ({config.get('modules_to_save')})",
    }
    for key, what in refusals.items():
        if config.get(key):
            raise ModelError(f"{adapter_dir}: a GGUF LoRA adapter cannot hold {what}; use the merged model")
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{adapter_dir}: a {config['peft_type']} adapter is not LoRA; use the merged model")
    alpha, rank = float(config["lora_alpha"]), int(config["r"])
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _pairs(adapter_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{module name: {"A": (r, in), "B": (out, r)}}`` from the adapter's safetensors file."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, array in load_file(adapter_dir / "adapter_model.safetensors").items():
        stem = name.removeprefix(_PEFT_PREFIX)
        for part in ("A", "B"):
            marker = f".lora_{part}.weight"
            if stem.endswith(marker):
                pairs.setdefault(stem.removesuffix(marker), {})[part] = array.astype(np.float32)
                break
        else:
            raise ModelError(f"{adapter_dir}: unexpected tensor {name!r} (not a lora_A/lora_B weight)")
    return pairs


def write_gguf_lora(adapter_dir: Path, shape: LlamaShape, path: Path, name: str) -> dict[str, Any]:
    """Write the PEFT adapter in ``adapter_dir`` (for a Llama of ``shape``) as one GGUF adapter, ``path``."""
    alpha = lora_alpha(adapter_dir)
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, shape.block_count)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        pairs = _pairs(adapter_dir)
        for module, pair in sorted(pairs.items()):
            gguf_stem = names.get_name(module)
            if gguf_stem is None or not gguf_stem.startswith("blk.") or set(pair) != {"A", "B"}:
                raise ModelError(f"{adapter_dir}: no GGUF adapter tensor for {module!r}; merge it instead")
            lora_b = rotary_rows(gguf_stem, pair["B"], shape)  # A's rows are rank directions: as they are
            writer.add_tensor(f"{gguf_stem}.weight.lora_a", pair["A"])
            writer.add_tensor(f"{gguf_stem}.weight.lora_b", np.ascontiguousarray(lora_b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"adapted_weights": len(pairs), "lora_alpha": alpha}


def cached_gguf_lora(model_id: str, run_dir: Path, base_dir: Path) -> Path:
    """The GGUF adapter of the LoRA run ``run_dir`` on the base model in ``base_dir``, exported on first use
    and cached by the adapter's files (``serve --engine llama.cpp``: runs on one base share its model)."""
    adapter = RunDir(run_dir).adapter
    lora_alpha(adapter)  # refuses before anything is written
    shape = llama_shape(AutoConfig.from_pretrained(base_dir))

    def write(partial: Path) -> None:
        write_gguf_lora(adapter, shape, partial, name=model_id)

    return cache_file(f"{model_id}-{weights_fingerprint(adapter)}-lora", ADAPTER_NAME, write)


def export_gguf_lora(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """The base model as ``model.gguf`` (not merged), the run's adapter as ``adapter.gguf``, and an Ollama
    ``Modelfile`` that names both."""
    if source.kind != "adapter":
        raise RunError(f"{source.run_dir} is a full fine-tune (model/), it has no adapter; use --format gguf")
    adapter = RunDir(source.run_dir).adapter
    lora_alpha(adapter)  # refuses what the file cannot hold before the base is loaded
    trust = source.cfg.model.trust_remote_code
    base = load_causal_lm(source.cfg.model.name, "float32", trust)
    tokenizer = load_tokenizer(str(adapter), trust)  # the run's: it is what the adapter was trained with
    base_name = Path(source.cfg.model.name).name
    details = write_gguf(base, tokenizer, out / GGUF_NAME, options.gguf_type, name=base_name)
    lora = write_gguf_lora(adapter, llama_shape(base.config), out / ADAPTER_NAME, name=source.cfg.name)
    modelfile, chatml = render_modelfile(tokenizer, source.cfg.data.system_prompt, f"./{GGUF_NAME}")
    write_text_atomic(out / "Modelfile", modelfile + f"ADAPTER ./{ADAPTER_NAME}\n")
    return {
        "gguf_file": GGUF_NAME,
        "adapter_file": ADAPTER_NAME,
        **details,
        **lora,
        "modelfile_template": "chatml" if chatml else None,
    }
