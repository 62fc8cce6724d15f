"""A job's checkpoints as servable runs: ``<run>/served/ckpt-step-N/`` (config + a PEFT ``adapter/``).

The loop's checkpoints hold the trainable tensors under PEFT's in-memory names
(``...lora_A.default.weight``); a saved adapter names them without the adapter name (``...lora_A.weight``).
Renaming is all it takes, so each checkpoint costs one adapter's size on disk (a few MB for LoRA).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from tunesmith.io import atomic_dir
from tunesmith.runs import RunDir
from tunesmith.train.checkpoint import list_checkpoints

SERVED = "served"
WEIGHTS = "adapter_model.safetensors"


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints on disk (those with a manifest), oldest first."""
    return [int(p.name.removeprefix("step-")) for p in list_checkpoints(run_dir / "checkpoints")]


def served_dir(run_dir: Path, step: int) -> Path:
    return run_dir / SERVED / f"ckpt-step-{step}"


def publish(run_dir: Path, step: int) -> Path | None:
    """Write checkpoint ``step`` as a servable run beside the job's run; None for a non-LoRA run."""
    run = RunDir(run_dir)
    if not (run.adapter / WEIGHTS).exists():
        return None
    tensors = load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors")
    renamed = {name.replace(".default.", "."): t.contiguous() for name, t in tensors.items()}
    target = served_dir(run_dir, step)
    with atomic_dir(target) as tmp:
        for path in (run.config, run.summary, run.data_report):
            if path.exists():
                shutil.copy(path, tmp / path.name)
        shutil.copytree(run.adapter, tmp / run.adapter.name)
        save_file(renamed, tmp / run.adapter.name / WEIGHTS)
    return target
