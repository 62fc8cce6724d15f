"""QLoRA: the base loaded in 4-bit (bitsandbytes NF4/FP4), LoRA adapters on top in ``compute_dtype``.

The quantization happens at load time, so besides ``prepare`` this method contributes
:func:`load_options` (extra ``from_pretrained`` arguments) that ``api.train`` and ``runs.load_trained`` pass
to the loader. bitsandbytes >= 0.48 has CPU kernels for 4-bit (measured here: 0.50.2, torch 2.13 CPU); on
CPU 4-bit matmuls dequantize per call, so QLoRA saves memory, not time. Saved as a stock PEFT adapter; load
it onto a 4-bit base (as ``load_trained`` does) or onto the fp32 base for a slightly different model.

One bitsandbytes CPU path is routed around for training (:func:`keep_differentiable_kernels`): on CPUs with
AVX512-BF16, the first forward of a ``Linear4bit`` in eval mode without grad (``evaluate_loss``, an eval
step) repacks its weight, for good, for a fused bf16 kernel (``gemv_4bit``, any batch shape) that has no
backward: training after that computed in bf16 and passed no gradient through the 4-bit base, so every LoRA
below a base layer got a wrong gradient (measured on a tiny Llama: relative error 1 to 6 per LoRA gradient;
torch only warns "gemv_4bit: an autograd kernel was not registered").
``tests/unit/methods/test_qlora_grads.py`` checks the gradients against LoRA on the dequantized fp32 base.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from tunesmith.errors import ModelError
from tunesmith.methods.lora import lora_config

INSTALL_HINT = "pip install 'tunesmith[qlora]' (bitsandbytes==0.50.2)"


def _require_bitsandbytes() -> Any:
    try:
        import bitsandbytes  # deferred: bitsandbytes is the optional `qlora` extra
    except ImportError as err:
        raise ModelError(
            f"method qlora loads the base in 4-bit and needs bitsandbytes, which cannot be imported here "
            f"({err}). Install it with `{INSTALL_HINT}`, or use method.name: lora (same adapter, fp32 base)"
        ) from None
    return bitsandbytes


def load_options(method_cfg: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the base quantized to 4 bits."""
    _require_bitsandbytes()
    compute = torch.bfloat16 if method_cfg.compute_dtype == "bfloat16" else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method_cfg.quant_type,
        bnb_4bit_use_double_quant=method_cfg.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=torch.uint8,
    )
    # 4-bit weights are quantized while loading onto the target device, so the device is chosen here.
    device = {"": 0} if torch.cuda.is_available() else "cpu"
    return {"quantization_config": quant, "device_map": device}


def ready_for_kbit_training(model: Any) -> Any:
    """Check the base is 4-bit and let PEFT ready it for training an adapter on top."""
    if not getattr(model, "is_loaded_in_4bit", False):
        raise ModelError(
            "method qlora got a base that is not 4-bit; load it with tunesmith.methods.load_options(cfg) "
            "(api.train does this)"
        )
    keep_differentiable_kernels(model)
    # Casts norms to fp32 and lets the input embeddings pass gradients; no gradient checkpointing (it
    # trades ~30% more compute for activation memory, which tiny CPU batches do not need).
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_differentiable_kernels(model: Any) -> int:
    """Keep every 4-bit linear layer of ``model`` on bitsandbytes' differentiable path: dequantize to
    ``compute_dtype`` and matmul (``MatMul4Bit`` with grad, ``gemm_4bit`` without); returns the layer count.

    bitsandbytes 0.50.2 ``Linear4bit.forward`` on a CPU with AVX512-BF16, in eval mode with an input that
    needs no grad, repacks the weight in place (``packing_format_for_cpu``) and from then on, in train mode
    too, runs ``gemv_4bit``: bf16 compute, no autograd kernel, so no gradient through the base. This turns the
    repacking off per layer (``support_avx512bf16_for_cpu``, an instance flag read only there) and undoes a
    repacking that already happened (bitsandbytes' own inverse; best effort: the absmax went through bf16 and
    is re-quantized). CPUs without AVX512-BF16 never repack, so this changes nothing there.

    Cost, measured on an AVX512-BF16 Xeon, 1 thread. Training: none measurable (tiny Llama after an eval
    pass, forward + backward of 4 x 64 tokens, best of 5: 10.0 ms against 9.8 ms on the broken packed path).
    One 2048x2048 NF4 layer, no grad: 64 tokens 11.3 ms (13.4 ms packed), 512 tokens 56 ms (122 ms packed), a
    single token 3.2 ms (0.7 ms packed). So only one-token decoding is slower; ``load_trained`` applies it
    too, so a reloaded run predicts exactly what it evaluated to at the end of training, on every CPU (the
    packed kernel's bf16 moved logits by ~1e-3).
    """
    import bitsandbytes as bnb  # deferred: bitsandbytes is the optional `qlora` extra
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            module.quant_state = weight.quant_state
        count += 1
    return count


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:

    model = ready_for_kbit_training(model)
    return get_peft_model(model, lora_config(method_cfg, model, head))
