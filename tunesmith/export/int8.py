"""int8 export for CPU inference: int8 weights on disk, dynamic int8 matmuls at run time.

    tunesmith export runs/lora-demo --format int8 --out exports/int8

    from tunesmith.export.int8 import load_int8
    model, tokenizer = load_int8("exports/int8")

What is stored. Every ``nn.Linear`` (the output head included, untied from the embedding) is quantized
symmetrically per output channel: ``w ≈ weight_int8 * weight_scale[:, None]`` with int8 in [-127, 127].
``model.int8.safetensors`` holds those int8 tensors and fp32 scales; embeddings and norms stay fp32.
We store int8 rather than fp32-to-be-quantized-at-load because (1) the file is about half the size of the
fp32 model, and (2) the file *is* the model that runs: its sha256 in the manifest pins the quantized
weights, and loading makes no numeric choices that could drift with the torch version. The weights file is
deliberately not called ``model.safetensors``, so stock ``from_pretrained`` fails loudly on this folder
instead of loading it as something else.

How it runs. ``torch.ao.nn.quantized.dynamic.Linear`` (fbgemm/x86 kernels: activations quantized per call,
int8 x int8 matmul). torch 2.13 marks ``torch.ao.quantization`` deprecated in favour of torchao, but it is
still the only fast eager int8 CPU path in core torch: torchao needs ``torch.compile`` for CPU speed, and
core ``torch._weight_int8pack_mm`` / ``torch._int_mm`` measured slower than fp32 on our 2-core x86 CPU.
If a future torch drops the module, ``load_int8`` still works: it dequantizes to fp32 ``nn.Linear`` (same
numbers, no speed-up) and warns.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.export.common import ExportOptions, Source, load_merged

WEIGHTS_NAME = "model.int8.safetensors"
SPEC_NAME = "int8_config.json"
SCHEME = "int8-symmetric-per-channel-weights/dynamic-activations"


def quantize_weight(weight: Any) -> tuple[Any, Any]:
    """(int8 weights, fp32 per-row scales); symmetric: zero stays exactly zero and needs no offset."""
    import torch

    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _linear_names(model: Any) -> list[str]:
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def save_int8(model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    """Quantize every linear layer of ``model`` (not modified) and write the int8 folder into ``out``."""
    import torch
    from safetensors.torch import save_file

    from tunesmith.export.hf import set_generation_stop

    modules = _linear_names(model)
    if not modules:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    quantized = {f"{m}.weight" for m in modules}
    tensors: dict[str, Any] = {}
    for name, module in model.named_modules():
        if name in modules:
            q, scale = quantize_weight(module.weight)
            tensors[f"{name}.weight_int8"] = q.contiguous()
            tensors[f"{name}.weight_scale"] = scale.contiguous()
    for key, value in model.state_dict().items():
        if key not in quantized:
            # clone: tied or shared tensors cannot be written twice by safetensors
            tensors[key] = value.detach().to(torch.float32).contiguous().clone()
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "scheme": SCHEME})
    config = model.config.to_dict()
    config["tie_word_embeddings"] = False  # the int8 head is its own tensor, no longer the embedding
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
    generation = copy.deepcopy(model.generation_config)
    set_generation_stop(generation, tokenizer)
    generation.save_pretrained(out)
    tokenizer.save_pretrained(out)
    spec = {"scheme": SCHEME, "weights": WEIGHTS_NAME, "modules": modules, "torch": torch.__version__}
    (out / SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return {"scheme": SCHEME, "quantized_modules": len(modules), "weights_file": WEIGHTS_NAME}


def _dynamic_linear(q: Any, scale: Any, bias: Any) -> Any:
    """An int8 ``DynamicQuantizedLinear`` holding exactly ``q``/``scale``, or None if torch lacks it."""
    import torch

    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    except ImportError:
        return None
    out_f, in_f = q.shape
    with warnings.catch_warnings():
        # deprecation notices for torch.ao / quantized tensors: see the module docstring for why we use them
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        layer = DynamicLinear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
        # requantizing q * scale with the same scale gives back q exactly (|error| << 0.5 before rounding)
        qweight = torch.quantize_per_channel(
            q.to(torch.float32) * scale[:, None],
            scale.double(),
            torch.zeros(out_f, dtype=torch.long),
            0,
            torch.qint8,
        )
        layer.set_weight_bias(qweight, bias)
    return layer


def _fp32_linear(q: Any, scale: Any, bias: Any) -> Any:
    import torch

    layer = torch.nn.Linear(q.shape[1], q.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(q.to(torch.float32) * scale[:, None])
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def load_int8(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from an int8 export folder, ready for CPU inference (eval mode)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    path = Path(path)
    spec_path = path / SPEC_NAME
    if not spec_path.exists():
        raise ModelError(f"{path} is not an int8 export (no {SPEC_NAME}); create one with --format int8")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if spec.get("scheme") != SCHEME:
        raise ModelError(f"{path}: unknown int8 scheme {spec.get('scheme')!r}; re-export with this tunesmith")
    config = AutoConfig.from_pretrained(path)
    with no_init_weights():  # every tensor is overwritten below; skip the random init (seconds at 135M)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_file(str(path / spec["weights"]))
    packed = {
        name: (
            tensors.pop(f"{name}.weight_int8"),
            tensors.pop(f"{name}.weight_scale"),
            tensors.pop(f"{name}.bias", None),
        )
        for name in spec["modules"]
    }
    # fp32 tensors first: quantized modules keep their weights in packed params load_state_dict cannot fill
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    replaced = {f"{m}.{p}" for m in spec["modules"] for p in ("weight", "bias")}
    missing = [k for k in missing if k not in replaced]
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not match the config (missing {missing[:3]}, extra {unexpected[:3]})"
        )
    fallback = False
    for name, (q, scale, bias) in packed.items():
        layer = _dynamic_linear(q, scale, bias)
        if layer is None:
            fallback = True
            layer = _fp32_linear(q, scale, bias)
        model.set_submodule(name, layer)
    if fallback:
        warnings.warn("torch has no dynamic int8 Linear; running dequantized fp32 weights", stacklevel=2)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def export_int8(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """The merged model with int8 linear layers (see the module docstring); load it with ``load_int8``."""
    import torch

    model, tokenizer = load_merged(source)
    return save_int8(model.to(dtype=torch.float32), tokenizer, out)
