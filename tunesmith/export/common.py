"""What every export format shares: the source run, the output-directory guard, hashes and the manifest.

Each format is a function ``(source, out, options) -> details`` that writes its files into ``out`` (a
temporary directory that replaces the target only when the whole export succeeded) and returns
format-specific facts for ``manifest.json``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

import tunesmith
from tunesmith.config import RunConfig
from tunesmith.errors import ModelError, RunError
from tunesmith.io import write_json_atomic
from tunesmith.methods import load_trained
from tunesmith.models.loading import resolve_model_path
from tunesmith.runs import RunDir, file_sha256, read_run_config

MANIFEST = "manifest.json"
GGUF_TYPES = ("f16", "q8_0", "f32")


@dataclass(frozen=True)
class ExportOptions:
    """Knobs a format may read; formats ignore the ones that are not theirs."""

    gguf_type: str = "f16"
    """GGUF encoding: ``f16`` (half the f32 size, near-lossless), ``q8_0`` (about a quarter) or ``f32``."""


@dataclass(frozen=True)
class Source:
    """A finished run directory, checked once before any format touches it."""

    run_dir: Path
    cfg: RunConfig
    kind: str
    """``adapter`` (a PEFT LoRA adapter on top of ``cfg.model.name``) or ``model`` (a full model)."""

    @property
    def artifact_dir(self) -> Path:
        return self.run_dir / self.kind


def open_source(run_dir: str | Path) -> Source:
    """Check that ``run_dir`` is a finished run and say which kind of artifact it holds."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise RunError(
            f"run directory not found: {run_dir}; pass the folder `tunesmith train` wrote (runs/NAME)"
        )
    cfg = read_run_config(run_dir)
    saved = RunDir(run_dir).saved()  # model/ or adapter/
    if saved is not None:
        return Source(run_dir=run_dir, cfg=cfg, kind=saved.name)
    raise RunError(
        f"{run_dir} has no adapter/ or model/: the run did not finish; "
        "continue it with `tunesmith train CONFIG --resume`"
    )


def load_merged(source: Source) -> tuple[Any, Any]:
    """(model, tokenizer) with any LoRA folded into the base weights, in eval mode."""
    model, tokenizer, _ = load_trained(source.run_dir, merge=True)
    return model, tokenizer


def _local_base_dir(name: str) -> Path:
    resolved = resolve_model_path(name)
    if isinstance(resolved, Path):
        return resolved.resolve()
    try:  # a hub id: its files live in the Hugging Face cache if the run could load it
        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception as err:
        raise ModelError(
            f"cannot find the base model {name!r} locally to hash it ({type(err).__name__}); "
            "load it once (e.g. `tunesmith eval RUN_DIR`) or set model.name to its local directory"
        ) from None


def base_model_info(cfg: RunConfig) -> dict[str, Any]:
    """The base model's name, where it was found, and the sha256 of each of its weight files."""
    folder = _local_base_dir(cfg.model.name)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"the base model folder {folder} holds no .safetensors weights to hash")
    return {
        "name": cfg.model.name,
        "path": str(folder),
        "weights_sha256": {f.name: file_sha256(f) for f in files},
    }


def is_previous_export(folder: Path) -> bool:
    """A folder this module wrote before: it has a manifest naming a format and a tunesmith version."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"format", "tunesmith_version"} <= manifest.keys()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out: Path, source: Source, force: bool) -> None:
    """Refuse output folders we must not replace.

    The output folder is replaced as a whole, so ``--out`` may not be the run, the base model folder, or a
    folder holding either (that would delete them), nor lie inside the run's adapter/model or the base
    (that would modify an input); no ``force`` allows those. A non-empty folder that is not an earlier
    export is refused unless ``force``.
    """
    out = out.resolve()
    inputs = [source.artifact_dir]
    base = Path(source.cfg.model.name).expanduser()
    if base.is_dir():
        inputs.append(base.resolve())
    for folder in [source.run_dir, *inputs]:
        # replacing `out` deletes everything under it; writing inside an input would modify that input
        if _within(folder, out) or (folder in inputs and _within(out, folder)):
            raise RunError(
                f"--out {out} overlaps {folder}, which the export reads; "
                f"choose a separate folder, e.g. {source.run_dir / 'export'}"
            )
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not is_previous_export(out) and not force:
        raise RunError(
            f"--out {out} is not empty and is not a previous export; choose an empty folder "
            "or pass --force to replace it"
        )


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX paths, sorted), the manifest excluded."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(
    folder: Path, fmt: str, source: Source, options: dict[str, Any], details: dict[str, Any]
) -> dict[str, Any]:
    """Write ``manifest.json``: what was exported, from which run, base and data, and each file's hash."""
    summary_path = RunDir(source.run_dir).summary
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    manifest = {
        "format": fmt,
        "options": options,
        "run_dir": str(source.run_dir),
        "run_name": source.cfg.name,
        "run_kind": source.kind,
        "base_model": base_model_info(source.cfg),
        "data_hashes": summary.get("data_hashes", {}),
        "tunesmith_version": tunesmith.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "details": details,
        "files": file_hashes(folder),
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest
