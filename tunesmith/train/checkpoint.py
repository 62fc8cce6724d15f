"""Atomic, resumable checkpoints in safetensors + JSON only (no pickles on disk).

A checkpoint directory ``checkpoints/step-000120/`` holds:
  trainable.safetensors  the parameters that train (LoRA: a few MB; full: the whole model)
  optimizer.safetensors  AdamW moments, flattened to ``{param_index}.{key}`` tensors
  rng.safetensors        torch CPU (and CUDA) generator states
  ema.safetensors        the averaged weights, when ``train.ema_decay`` is set
  state.json             step, data position, scheduler state, optimizer hyper-parameters, Python/NumPy RNG
  manifest.json          every other file's sha256 and size, written last (and fsynced with them)
Written into a temp dir and renamed, so a crash mid-save leaves the previous checkpoint intact. The manifest
guards against what a rename cannot: a file torn by a power loss before the OS flushed it, a disk that
corrupted it, a hand that edited it. :func:`latest_checkpoint` checks it and falls back to the previous
checkpoint (with a warning naming the bad one); :func:`load_checkpoint` refuses a checkpoint that fails it.
Retention never deletes an older checkpoint before the new one has been re-read and verified.

Disk full or read-only mid-save raises a :class:`RunError` naming the path (the previous checkpoint is
untouched, the run resumable once space returns). The ``fault_point`` calls are test-only hooks
(:mod:`tunesmith.faults`): the crash tests SIGKILL the process at each of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from tunesmith.errors import RunError
from tunesmith.faults import fault_point
from tunesmith.io import atomic_dir

MANIFEST = "manifest.json"


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


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP-sharded one (a DTensor: gathered from every rank, so every rank must ask,
    in the same order), else the tensor itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _like(tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole) laid out as ``target``: this rank's slice when ``target`` is sharded, cut locally
    (every rank holds the whole tensor, read from the same file), on its device and dtype."""
    tensor = tensor.to(target.device, target.dtype)
    if isinstance(target, DTensor) and not isinstance(tensor, DTensor):
        return distribute_tensor(tensor, target.device_mesh, target.placements, src_data_rank=None)
    return tensor


def cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU clones by name, ready for safetensors (which refuses shared storage); sharded
    tensors are gathered whole first."""
    return {n: _whole(t.detach()).to("cpu").contiguous().clone() for n, t in tensors.items()}


@torch.no_grad()
def copy_into(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Copy each of ``tensors`` in place into the same-named target, on the target's device, dtype and (for
    a sharded target) layout."""
    for name, tensor in tensors.items():
        targets[name].copy_(_like(tensor, targets[name]))


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
                tensors[f"{idx}.{key}"] = _whole(value.detach()).to("cpu").contiguous().clone()
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
    # Saved whole; a sharded parameter's moments must be its slice (``step`` is a scalar, kept as is).
    for param, pstate in optimizer.state.items():
        if isinstance(param, DTensor):
            for key, value in pstate.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    pstate[key] = _like(value, param)


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
    write: bool = True,
) -> Path:
    """Write ``ckpt_root/step-NNNNNN`` atomically and prune all but the newest ``keep_last``;
    ``averaged``: the weight average's tensors (``train.ema_decay``), saved beside the weights. A sharded
    run's ranks all call it (gathering is collective); ``write=False`` (every rank but 0) stops there.

    Raises:
        RunError: The disk is full or not writable (names the path; earlier checkpoints are intact).
    """
    target = ckpt_root / f"step-{state.step:06d}"
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tensors = {
        "trainable": trainable_state(model),
        "optimizer": opt_tensors,
        "rng": _rng_tensors(),
        **({"ema": cpu_copies(averaged)} if averaged is not None else {}),
    }
    if not write:
        return target
    meta = {
        "train_state": asdict(state),
        "scheduler": scheduler.state_dict(),
        "optimizer": opt_meta,
        "rng": _python_rng(),
    }
    for stale in ckpt_root.glob(".step-*"):  # a killed save's temp dir (one writer per run at a time)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with atomic_dir(target) as tmp:
            for name, group in tensors.items():
                save_file(group, str(tmp / f"{name}.safetensors"))
                fault_point(f"checkpoint.after_{name}")
            (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
            fault_point("checkpoint.after_state")
            _write_manifest(tmp)
            fault_point("checkpoint.after_manifest")  # complete, not yet renamed into place
        _fsync_dir(ckpt_root)
    except (OSError, SafetensorError) as exc:  # safetensors reports its own I/O errors (ENOSPC) as this
        reason = f"{exc.strerror} (errno {exc.errno})" if isinstance(exc, OSError) else str(exc)
        raise RunError(
            f"could not write checkpoint {target}: {reason}; free disk space or make {ckpt_root} "
            "writable, then continue with --resume (earlier checkpoints are intact)"
        ) from exc
    fault_point("checkpoint.after_rename")
    problem = verify_checkpoint(target)
    if problem is not None:  # written but unreadable: keep every older checkpoint
        raise RunError(f"checkpoint {target} failed verification right after writing: {problem}")
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    """Hash and fsync every file of ``folder``, then write (and fsync) ``manifest.json`` listing them."""
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with path.open("rb") as fh:
            os.fsync(fh.fileno())  # on disk before the rename publishes it (a power loss keeps whole files)
        files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    manifest = folder / MANIFEST
    with manifest.open("w", encoding="utf-8") as fh:
        json.dump({"files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def verify_checkpoint(path: Path) -> str | None:
    """None when every file listed in ``path``'s manifest is there with its size and sha256; else what is
    wrong, in words (a missing manifest counts: the save did not finish)."""
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish)"
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, want in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != want["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {want['bytes']}"
        if _sha256(file) != want["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    if "state.json" not in files:
        return f"state.json is not in {MANIFEST}"
    return None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Finished checkpoints (with a manifest), oldest first; temp dirs of an interrupted save are ignored.
    Their contents are not verified here: :func:`latest_checkpoint` does that."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step-*") if (p / MANIFEST).exists())


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint that passes :func:`verify_checkpoint`; each newer one that fails is skipped
    with a warning on stderr naming it and why. None when there is none."""
    candidates = sorted(ckpt_root.glob("step-*")) if ckpt_root.is_dir() else []
    for path in reversed(candidates):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        print(
            f"tunesmith: warning: skipping checkpoint {path}: {problem}; using an older one", file=sys.stderr
        )
    return None


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
    verified: bool = False,
) -> TrainState:
    """Restore model, optimizer, scheduler, RNG (and, in place, the weight average's ``averaged``
    tensors) from ``path``; return the saved TrainState. ``verified``: the caller has just checked the
    manifest (:func:`latest_checkpoint`), so the files are not hashed a second time.

    Raises:
        RunError: The checkpoint fails its manifest check, or does not match the model.
    """
    problem = None if verified else verify_checkpoint(path)
    if problem is not None:
        raise RunError(f"checkpoint {path} is damaged: {problem}; resume from an earlier one or start over")
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


def save_weights(path: Path, model: torch.nn.Module, write: bool = True) -> None:
    """Save the trainable weights alone (the best-so-far snapshot for early stopping); ``write=False``:
    only join in gathering a sharded model's weights (every rank but 0)."""
    weights = trainable_state(model)
    if write:
        with atomic_dir(path) as tmp:
            save_file(weights, str(tmp / "trainable.safetensors"))


def restore_weights(path: Path, model: torch.nn.Module) -> None:
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
