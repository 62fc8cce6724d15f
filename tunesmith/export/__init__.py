"""Export a finished run for use outside tunesmith; one function per format, registered by name.

    from tunesmith.export import export
    export("runs/lora-demo", "gguf", "exports/gguf", gguf_type="q8_0")

Formats: ``merged`` (standalone transformers model), ``adapter`` (the PEFT adapter alone), ``gguf``
(llama.cpp / Ollama, with a Modelfile), ``gguf-lora`` (the base's GGUF plus the adapter as a GGUF LoRA
adapter, for LoRA runs), ``int8`` (CPU int8, load with ``tunesmith.export.int8.load_int8``).
Every export writes ``manifest.json`` (run, base model and data hashes, version, time, each file's sha256)
and appears atomically: the output folder is replaced only once everything was written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.export.common import (
    GGUF_TYPES,
    MANIFEST,
    ExportOptions,
    Source,
    check_out_dir,
    open_source,
    write_manifest,
)
from tunesmith.export.gguf_export import export_gguf
from tunesmith.export.gguf_lora import export_gguf_lora
from tunesmith.export.hf import export_adapter, export_merged
from tunesmith.export.int8 import export_int8
from tunesmith.io import atomic_dir

ExportFn = Callable[[Source, Path, ExportOptions], dict[str, Any]]

FORMATS: dict[str, ExportFn] = {
    "merged": export_merged,
    "adapter": export_adapter,
    "gguf": export_gguf,
    "gguf-lora": export_gguf_lora,
    "int8": export_int8,
}

HEAD_FORMATS = ("merged", "adapter")
"""Formats for ``model.head: classification`` runs (GGUF and the int8 loader expect a causal LM)."""


def export(
    run_dir: str | Path, fmt: str, out: str | Path, *, gguf_type: str = "f16", force: bool = False
) -> Path:
    """Export the run in ``run_dir`` as ``fmt`` into the folder ``out``; returns ``out``.

    Args:
        run_dir: A finished run directory (``config.yaml`` plus ``adapter/`` or ``model/``).
        fmt: One of ``FORMATS``.
        out: Output folder. Replaced atomically if it is empty, missing or a previous export.
        gguf_type: ``f16``, ``q8_0`` or ``f32``; used by ``gguf`` and ``gguf-lora`` (the base) only.
        force: Also replace a non-empty folder that is not a previous export.

    Raises:
        ConfigError: unknown format or GGUF type.
        RunError: not a finished run, or an output folder we must not replace.
        ModelError: the model or tokenizer cannot be written in this format.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    source = open_source(run_dir)
    if source.cfg.model.head == "classification" and fmt not in HEAD_FORMATS:
        raise ConfigError(
            f"{run_dir} is a classification-head run: it exports as {' or '.join(HEAD_FORMATS)} "
            f"(stock AutoModelForSequenceClassification / PEFT); {fmt} carries a causal LM only"
        )
    out = Path(out)
    check_out_dir(out, source, force)
    options = ExportOptions(gguf_type=gguf_type)
    with atomic_dir(out) as tmp:
        details = FORMATS[fmt](source, tmp, options)
        write_manifest(tmp, fmt, source, {"gguf_type": gguf_type} if fmt.startswith("gguf") else {}, details)
    return out


__all__ = ["FORMATS", "GGUF_TYPES", "MANIFEST", "ExportOptions", "export"]
