"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer placement): after each block's MLP, a small residual
module ``h + scale * up(act(down(h)))`` with ``up`` zero-initialised, so training starts from the base model.

Why not a library: AdapterHub's ``adapters`` 1.3.0 (the maintained one) requires ``transformers~=4.57.6``
and does not import against transformers 5.23 / huggingface_hub 1.x (``HfFolder`` is gone), and PEFT has no
bottleneck adapter. So this is ~100 lines of our own.

The adapter is attached as a submodule of each MLP (``...mlp.bottleneck_adapter``) plus a forward hook,
rather than by replacing the MLP: every base parameter keeps its name, so the base still loads from stock
checkpoints and only ``bottleneck_adapter`` tensors are saved. On disk (``adapter/``):
``bottleneck.safetensors`` (the adapter tensors by name) and ``bottleneck_config.json`` (the method section).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.errors import RunError
from tunesmith.models.anatomy import output_head, transformer_blocks
from tunesmith.runs import AdapterFormat

WEIGHTS_NAME = "bottleneck.safetensors"
CONFIG_NAME = "bottleneck_config.json"
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    """hidden -> bottleneck -> hidden; returns only the update (the hook adds it to the MLP output)."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        self.scale = scale
        nn.init.zeros_(self.up.weight)  # identity at step 0: the adapted model starts as the base
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(hidden)))


def _add_update(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output + module.bottleneck_adapter(output)


def attach(model: Any, settings: dict[str, Any]) -> Any:
    """Insert an adapter after every block's MLP; returns the same model (modified in place)."""
    hidden = model.config.hidden_size
    dtype = next(model.parameters()).dtype
    for block in transformer_blocks(model):
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            raise RunError(f"method adapter: block {type(block).__name__} has no .mlp to attach to")
        mlp.bottleneck_adapter = Bottleneck(
            hidden, settings["bottleneck"], settings["activation"], settings["scale"]
        ).to(dtype)
        mlp.register_forward_hook(_add_update)
    model.tunesmith_adapter = dict(settings)  # marks the model for runs.save_trained
    return model


def prepare(model: Any, method_cfg: Any, head: str = "lm") -> Any:
    """Bottleneck adapters after each MLP; with a classification head, ``score`` trains beside them and is
    saved and loaded with the adapter tensors."""
    for param in model.parameters():
        param.requires_grad_(False)
    settings = method_cfg.model_dump(exclude={"name"})
    attach(model, settings)
    for name, param in model.named_parameters():
        param.requires_grad_(".bottleneck_adapter." in name)
    if head != "lm":  # a new head is random: it must train with the adapters
        output_head(model).requires_grad_(True)
        model.tunesmith_adapter["head"] = "score"
    return model


def is_adapted(model: Any) -> bool:
    return hasattr(model, "tunesmith_adapter")


def _is_saved(name: str, settings: dict[str, Any]) -> bool:
    """Adapter tensors, plus the classification head when one trains beside them (``settings["head"]``)."""
    head = settings.get("head")
    return ".bottleneck_adapter." in name or (head is not None and name.startswith(f"{head}."))


def save(model: Any, target: Path) -> None:
    """Write the adapter tensors and settings into ``target`` (an existing, atomic temp dir)."""
    settings = model.tunesmith_adapter
    tensors = {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if _is_saved(n, settings)
    }
    save_file(tensors, str(target / WEIGHTS_NAME))
    (target / CONFIG_NAME).write_text(json.dumps(settings, indent=2), encoding="utf-8")


def load(base: Any, source: Path) -> Any:
    """The base with the saved adapters attached and loaded (strict: every adapter tensor must match)."""
    settings = json.loads((source / CONFIG_NAME).read_text(encoding="utf-8"))
    attach(base, settings)
    tensors = load_file(str(source / WEIGHTS_NAME))
    params = dict(base.named_parameters())
    expected = {n for n in params if _is_saved(n, settings)}
    if set(tensors) != expected:
        raise RunError(
            f"{source / WEIGHTS_NAME} does not match the model: {len(tensors)} tensors saved, "
            f"{len(expected)} expected; was it trained on a different base (model.name)?"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return base


def _load_unmerged(base: Any, source: Path, merge: bool) -> Any:
    if merge:
        raise RunError(
            f"{source}: bottleneck adapters are nonlinear and cannot be merged into the base weights; "
            "export needs a LoRA-family method (lora, dora, qlora) or full/freeze"
        )
    return load(base, source)


FORMAT = AdapterFormat(marker=CONFIG_NAME, owns=is_adapted, save=save, load=_load_unmerged)
"""How ``runs.save_trained`` / ``runs.load_trained`` recognise, save and load these adapters."""
