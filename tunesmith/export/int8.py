"""int8 export for CPU inference: int8 weights on disk; int8 matmuls where they are safe.

    tunesmith export runs/lora-demo --format int8 --out exports/int8

    from tunesmith.export.int8 import load_int8
    model, tokenizer = load_int8("exports/int8")

What is stored. Every ``nn.Linear`` (the output head included, untied from the embedding) is quantized
symmetrically per output channel: ``w ≈ weight_int8 * weight_scale[:, None]``, int8 in [-127, 127].
``model.int8.safetensors`` holds those int8 tensors and fp32 scales; embeddings and norms stay fp32.
We store int8 rather than fp32-to-be-quantized-at-load because (1) the file is under half the size of the
fp32 model, and (2) the file *is* the model that runs: its sha256 in the manifest pins the quantized
weights, and loading makes no numeric choices that could drift with the torch version. The weights file is
deliberately not called ``model.safetensors``, so stock ``from_pretrained`` fails loudly on this folder.

How it runs (``int8_config.json`` names a kernel per layer):

* ``int8-dynamic`` -- activations quantized per call, int8 x int8 matmul (``torch.ao.nn.quantized.dynamic.
  Linear``, fbgemm). Used for the output head, the largest matmul per token (49152 x 576 on the default
  model, ~5x faster than fp32 at batch 1). Its input channels are first *smoothed* (SmoothQuant): a per-
  channel factor ``s`` measured on a few built-in calibration chats moves activation outliers into the
  weights (head columns x s, final norm weight / s: the same function in fp32, so ``last_hidden_state`` is
  rescaled per channel while the logits are not).
* ``weight-only`` -- every other layer: int8 weights expanded to fp16 at load, fp32 activations (fbgemm fp16
  kernel). Quantizing these layers' activations too is what ``torch.ao.quantization.quantize_dynamic`` does,
  and on SmolLM2-135M it is ruinous (down_proj inputs carry rare, huge per-token spikes; q/k/v and gate/up
  inputs have outlier channels).

bench/bench_int8.py on the default model (50-token prompt + 32 greedy tokens, our 2-core AVX2 CPU): this
export 23.0 tokens/s vs fp32 11.0 with 2 threads (2.1x), 16-18 vs 11-12 with 1 thread (noisy under load);
top-1 agreement with fp32 92 %, mean KL 0.016 nats; weights 249 MB vs 538 MB. ``quantize_dynamic`` on every
layer runs at 26.9 tokens/s but agrees on top-1 only 36 % of the time (KL 1.9): a different model.

``torch.ao.quantization`` is deprecated in torch 2.13 in favour of torchao, yet it is still the only
fast eager int8 CPU path in core torch (torchao needs ``torch.compile`` for CPU speed;
``torch._weight_int8pack_mm`` measured 3-6x slower than fp32 on our AVX2 CPU). If a future torch drops it,
``load_int8`` still works: it expands the int8 weights to fp32 ``nn.Linear`` (same numbers, no speed-up)
and warns.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from tunesmith.errors import ModelError
from tunesmith.export.common import ExportOptions, Source, load_merged
from tunesmith.export.hf import set_generation_stop

WEIGHTS_NAME = "model.int8.safetensors"
SPEC_NAME = "int8_config.json"
SCHEME = "int8-per-channel-v1"
INT8_DYNAMIC = "int8-dynamic"
WEIGHT_ONLY = "weight-only"
SMOOTH_ALPHA = 0.7
"""SmoothQuant migration strength: 0 leaves outliers in the activations, 1 moves them all into the weights."""

# Calibration for smoothing: generic chats, so an export needs no access to the run's data.
_CALIBRATION = [
    (
        "Write a haiku about autumn leaves.",
        "Crimson leaves drift down,\nwhispering to the cold ground:\nsummer's last goodbye.",
    ),
    (
        "How do I reverse a list in Python?",
        "Use items.reverse() to reverse in place, or items[::-1] for a copy.",
    ),
    (
        "Summarize Romeo and Juliet in two sentences.",
        "Two lovers from feuding families marry in secret. Misunderstandings end in both their deaths.",
    ),
    (
        "What are three benefits of exercise?",
        "1. A stronger heart.\n2. Better sleep.\n3. Improved mood, e.g. 30 minutes a day helps.",
    ),
]


def quantize_weight(weight: Any) -> tuple[Any, Any]:
    """(int8 weights, fp32 per-row scales); symmetric: zero stays exactly zero and needs no offset."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _linear_names(model: Any) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def _head_and_norm(model: Any) -> tuple[str, str] | None:
    """Names of the output head and the norm right before it (Llama layout), if both are there."""
    head = model.get_output_embeddings()
    norm = getattr(getattr(model, "model", None), "norm", None)
    if head is None or getattr(norm, "weight", None) is None or norm.weight.shape != (head.in_features,):
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(head)], names[id(norm)]


def calibration_ids(tokenizer: Any) -> list[Any]:
    """Token ids of the built-in calibration chats (through the chat template when there is one)."""
    texts = []
    for question, answer in _CALIBRATION:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        try:
            texts.append(tokenizer.apply_chat_template(chat, tokenize=False))
        except Exception:  # no chat template: plain text calibrates the same channels
            texts.append(f"{question}\n{answer}")
    return [tokenizer(t, return_tensors="pt").input_ids for t in texts]


def smoothed_head(model: Any, tokenizer: Any, head: str, norm: str) -> dict[str, Any]:
    """SmoothQuant for the output head: ``{head.weight: W * s, norm.weight: g / s}`` (model untouched).

    ``s_j = max|x_j| ** a / max|W_:j| ** (1 - a)`` over the head's inputs ``x`` on the calibration chats.
    """
    head_module = model.get_submodule(head)
    amax = torch.zeros(head_module.in_features)

    def record(module: Any, inputs: tuple[Any, ...]) -> None:
        x = inputs[0].detach().to(torch.float32)
        amax.copy_(torch.maximum(amax, x.abs().reshape(-1, x.shape[-1]).amax(0)))

    hook = head_module.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            for ids in calibration_ids(tokenizer):
                model(ids)
    finally:
        hook.remove()
    weight = head_module.weight.detach().to(torch.float32)
    wmax = weight.abs().amax(0).clamp(min=1e-5)
    s = (amax.clamp(min=1e-5) ** SMOOTH_ALPHA / wmax ** (1 - SMOOTH_ALPHA)).clamp(min=1e-5)
    gain = model.get_submodule(norm).weight.detach().to(torch.float32)
    return {f"{head}.weight": weight * s[None, :], f"{norm}.weight": gain / s}


def save_int8(model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    """Quantize every linear layer of ``model`` (left unmodified) and write the int8 folder into ``out``."""
    modules = _linear_names(model)
    if not modules:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    kernels = dict.fromkeys(modules, WEIGHT_ONLY)
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    pair = _head_and_norm(model)
    if pair is not None:  # without a norm to fold the smoothing into, the head stays weight-only
        model.eval()
        state.update(smoothed_head(model, tokenizer, *pair))
        kernels[pair[0]] = INT8_DYNAMIC
    tensors: dict[str, Any] = {}
    for name in modules:
        q, scale = quantize_weight(state.pop(f"{name}.weight"))
        tensors[f"{name}.weight_int8"], tensors[f"{name}.weight_scale"] = q.contiguous(), scale.contiguous()
    # clone: tied or shared tensors cannot be written twice by safetensors
    tensors.update({k: v.contiguous().clone() for k, v in state.items()})
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "scheme": SCHEME})
    config = model.config.to_dict()
    config["tie_word_embeddings"] = False  # the int8 head is its own tensor, no longer the embedding
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
    generation = copy.deepcopy(model.generation_config)
    set_generation_stop(generation, tokenizer)
    generation.save_pretrained(out)
    tokenizer.save_pretrained(out)
    spec = {"scheme": SCHEME, "weights": WEIGHTS_NAME, "kernels": kernels, "smooth_alpha": SMOOTH_ALPHA}
    (out / SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    counts = {kind: sum(1 for k in kernels.values() if k == kind) for kind in (INT8_DYNAMIC, WEIGHT_ONLY)}
    return {
        "scheme": SCHEME,
        "weights_file": WEIGHTS_NAME,
        "kernels": counts,
        "smoothed_head": pair is not None,
    }


def _dynamic_linear(q: Any, scale: Any, bias: Any, kind: str) -> Any:
    """A fbgemm dynamic Linear for ``kind`` holding ``q``/``scale``; None where torch cannot run one.

    None when ``torch.ao`` is gone or this CPU's quantized engine lacks the kernel (e.g. fp16 weights on
    qnnpack/ARM): one probe call at load finds out, instead of a crash at the first generate.
    """
    try:  # optional: torch.ao is deprecated and may be gone from a future torch
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear  # deferred: torch.ao only for int8
    except ImportError:
        return None
    out_f, in_f = q.shape
    weight = q.to(torch.float32) * scale[:, None]
    with warnings.catch_warnings():
        # deprecation notices for torch.ao / quantized tensors: see the module docstring for why we use them
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            if kind == WEIGHT_ONLY:
                layer = DynamicLinear(in_f, out_f, bias_=bias is not None, dtype=torch.float16)
                layer.set_weight_bias(weight, bias)
            else:
                layer = DynamicLinear(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
                # requantizing q * scale with the same scale gives back exactly q
                zero = torch.zeros(out_f, dtype=torch.long)
                qweight = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
                layer.set_weight_bias(qweight, bias)
            layer(torch.zeros(1, in_f))
        except (RuntimeError, NotImplementedError):
            return None
    return layer


def _fp32_linear(q: Any, scale: Any, bias: Any) -> Any:
    layer = torch.nn.Linear(q.shape[1], q.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(q.to(torch.float32) * scale[:, None])
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def load_int8(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from an int8 export folder, ready for CPU inference (eval mode)."""
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
    kernels: dict[str, str] = spec["kernels"]
    packed = {
        name: (
            tensors.pop(f"{name}.weight_int8"),
            tensors.pop(f"{name}.weight_scale"),
            tensors.pop(f"{name}.bias", None),
        )
        for name in kernels
    }
    # fp32 tensors first: quantized modules keep their weights in packed params load_state_dict cannot fill
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    replaced = {f"{m}.{p}" for m in kernels for p in ("weight", "bias")}
    missing = [k for k in missing if k not in replaced]
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not match the config (missing {missing[:3]}, extra {unexpected[:3]})"
        )
    fallback = False
    for name, (q, scale, bias) in packed.items():
        layer = _dynamic_linear(q, scale, bias, kernels[name])
        if layer is None:
            fallback = True
            layer = _fp32_linear(q, scale, bias)
        model.set_submodule(name, layer)
    if fallback:
        warnings.warn(
            "this torch/CPU cannot run some dynamic quantized Linear layers; those run int8 weights as fp32",
            stacklevel=2,
        )
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def export_int8(source: Source, out: Path, options: ExportOptions) -> dict[str, Any]:
    """The merged model with int8 linear layers (see the module docstring); load it with ``load_int8``."""
    model, tokenizer = load_merged(source)
    return save_int8(model.to(dtype=torch.float32), tokenizer, out)
