"""The ``tunesmith export`` subcommand; ``tunesmith/cli.py`` registers it with ``add_parser(sub)``.

tunesmith export runs/lora-demo --format merged --out exports/merged
tunesmith export runs/lora-demo --format gguf --gguf-type q8_0 --out exports/gguf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_NEXT_STEP = {
    "merged": "load it with transformers: AutoModelForCausalLM.from_pretrained({out!r})",
    "adapter": "load it with peft: PeftModel.from_pretrained(base, {out!r}); manifest.json names the base",
    "gguf": "run it: ollama create NAME -f {out}/Modelfile   or   llama-cli -m {out}/model.gguf",
    "gguf-lora": "run it: ollama create NAME -f {out}/Modelfile   or   "
    "llama-cli -m {out}/model.gguf --lora {out}/adapter.gguf",
    "int8": "load it: from tunesmith.export.int8 import load_int8; model, tok = load_int8({out!r})",
}


def _export(args: argparse.Namespace) -> int:
    from tunesmith.export import MANIFEST, export  # deferred: `tunesmith --help` loads no command

    out = export(args.run_dir, args.format, args.out, gguf_type=args.gguf_type, force=args.force)
    manifest = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
    size_mb = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 1e6
    count = len(manifest["files"]) + 1  # the manifest lists every file but itself
    print(f"tunesmith: exported {args.format} to {out} ({count} files, {size_mb:.0f} MB)")
    print("tunesmith: " + _NEXT_STEP[args.format].format(out=str(out)))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``export`` on the ``add_subparsers()`` object of the main parser."""
    from tunesmith.export import FORMATS, GGUF_TYPES  # deferred: `tunesmith --help` loads no command

    p = subparsers.add_parser(
        "export", help="export a finished run: merged model, adapter, GGUF (+ Ollama Modelfile) or int8"
    )
    p.add_argument("run_dir", help="a finished run directory (runs/NAME)")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="what to write")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument(
        "--gguf-type",
        default="f16",
        choices=GGUF_TYPES,
        help="GGUF encoding (default f16; q8_0 is about half its size)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a non-empty --out that is not a previous export"
    )
    p.set_defaults(func=_export)
