"""Atomic, resumable checkpoints in safetensors + JSON only (no pickles on disk).

A checkpoint directory ``checkpoints/step-000120/`` holds:
  trainable.safetensors  the parameters that train (LoRA: a few MB; full: the whole model)
  optimizer.safetensors  AdamW moments, flattened to ``{param_index}.{key}`` tensors
  rng.safetensors        torch CPU (and CUDA) generator states
  ema.safetensors        the averaged weights, when ``train.ema_decay`` is set
  state.json             step, data position, scheduler state, optimizer hyper-parameters, Python/NumPy RNG
Written into a temp dir and renamed, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.errors import RunError
from tunesmith.io import atomic_dir


@dataclass
class TrainState:
    """Where training stands; everything needed to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch index
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best_val_loss: float | None = None  # validation loss at best_step
    best_step: int | None = None
    best_score: float | None = None  # train.best_metric at best_step, oriented so higher is better
    evals_without_improvement: int = 0
    precision: str | None = None  # accelerate's name ("bf16"/"no") the run trains in, decided at its start
    global_micro_batch: int | None = (
        None  # examples per micro-batch over all processes: batch_in_epoch's unit
    )
    extra: dict[str, Any] = field(default_factory=dict)


def cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU clones by name, ready for safetensors (which refuses shared storage)."""
    return {n: t.detach().to("cpu").contiguous().clone() for n, t in tensors.items()}


@torch.no_grad()
def copy_into(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Copy each of ``tensors`` in place into the same-named target, on the target's device and dtype."""
    for name, tensor in tensors.items():
        targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, as CPU copies."""
    return cpu_copies({n: p for n, p in model.named_parameters() if p.requires_grad})


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise RunError(
            f"checkpoint does not match the model: missing {missing[:3]}... ({len(missing)} tensors)"
        )
    copy_into(params, tensors)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = st
    return tensors


def _python_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _restore_rng(tensors: dict[str, torch.Tensor], py: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = py["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((py["numpy"][0], np.array(py["numpy"][1], dtype=np.uint32), *py["numpy"][2:]))


def save_checkpoint(
    ckpt_root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    keep_last: int,
    averaged: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``ckpt_root/step-NNNNNN`` atomically and prune all but the newest ``keep_last``;
    ``averaged``: the weight average's tensors (``train.ema_decay``), saved beside the weights."""
    target = ckpt_root / f"step-{state.step:06d}"
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        if averaged is not None:
            save_file(cpu_copies(averaged), str(tmp / "ema.safetensors"))
        meta = {
            "train_state": asdict(state),
            "scheduler": scheduler.state_dict(),
            "optimizer": opt_meta,
            "rng": _python_rng(),
        }
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs of an interrupted save are ignored)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step-*") if (p / "state.json").exists())


def saved_precision(path: Path) -> str | None:
    """The precision a checkpoint's run trained in (None: saved before runs recorded it)."""
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return meta["train_state"].get("precision")


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    averaged: dict[str, torch.Tensor] | None = None,
) -> TrainState:
    """Restore model, optimizer, scheduler, RNG (and, in place, the weight average's ``averaged``
    tensors) from ``path``; return the saved TrainState."""
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(load_file(str(path / "rng.safetensors")), meta["rng"])
    if averaged is not None:
        if not (path / "ema.safetensors").exists():
            raise RunError(
                f"{path} was saved without train.ema_decay; resume with the settings it was trained with"
            )
        copy_into(averaged, load_file(str(path / "ema.safetensors")))
    return TrainState(**meta["train_state"])


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """Save the trainable weights alone (the best-so-far snapshot for early stopping)."""
    with atomic_dir(path) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))


def restore_weights(path: Path, model: torch.nn.Module) -> None:
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
