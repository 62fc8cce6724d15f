"""QLoRA: the base loaded in 4-bit (bitsandbytes NF4/FP4), LoRA adapters on top in ``compute_dtype``.

The quantization happens at load time, so besides ``prepare`` this method contributes
:func:`load_options` (extra ``from_pretrained`` arguments) that ``api.train`` and ``runs.load_trained`` pass
to the loader. bitsandbytes >= 0.48 has CPU kernels for 4-bit (measured here: 0.50.2, torch 2.13 CPU); on
CPU 4-bit matmuls dequantize per call, so QLoRA saves memory, not time. Saved as a stock PEFT adapter; load
it onto a 4-bit base (as ``load_trained`` does) or onto the fp32 base for a slightly different model.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ModelError
from tunesmith.methods.lora import lora_config

INSTALL_HINT = "pip install 'tunesmith[qlora]' (bitsandbytes==0.50.2)"


def _require_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as err:
        raise ModelError(
            f"method qlora loads the base in 4-bit and needs bitsandbytes, which cannot be imported here "
            f"({err}). Install it with `{INSTALL_HINT}`, or use method.name: lora (same adapter, fp32 base)"
        ) from None
    return bitsandbytes


def load_options(method_cfg: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the base quantized to 4 bits."""
    import torch
    from transformers import BitsAndBytesConfig

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
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False):
        raise ModelError(
            "method qlora got a base that is not 4-bit; load it with tunesmith.methods.load_options(cfg) "
            "(api.train does this)"
        )
    # Casts norms to fp32 and lets the input embeddings pass gradients; no gradient checkpointing (it
    # trades ~30% more compute for activation memory, which tiny CPU batches do not need).
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    from peft import get_peft_model

    model = ready_for_kbit_training(model)
    return get_peft_model(model, lora_config(method_cfg, model, head))
