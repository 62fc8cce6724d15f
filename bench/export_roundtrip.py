"""Export one finished run in every format and measure each export's round trip against the run itself.

    .venv/bin/python bench/export_roundtrip.py runs/demo [--out bench/results/export_roundtrip.json]

Reference: the run as tunesmith loads it (the base plus the *unmerged* LoRA adapter, or ``model/``), fp32.
Each format is exported into a temporary folder with ``tunesmith.export.export`` (timed), read back the way
its users would -- merged: stock ``AutoModelForCausalLM``; adapter: stock ``PeftModel`` on the base folder
the manifest names; gguf: transformers ``gguf_file=``; int8: ``load_int8`` -- and run on a fixed set of
chats (prompt and answer, every position scored). Per format it prints and records the max relative logit
error (max |logits - reference| / max |reference| over all positions of all chats), top-1 agreement with the
reference over those positions, the export time and the folder size. Not a timed test: figures depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TUNESMITH_HOME", str(ROOT / ".tunesmith"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tunesmith.errors import ConfigError, RunError  # noqa: E402
from tunesmith.export import MANIFEST, export  # noqa: E402
from tunesmith.export.gguf_export import GGUF_NAME  # noqa: E402
from tunesmith.io import write_json_atomic  # noqa: E402
from tunesmith.methods import load_trained  # noqa: E402

CHATS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Which material is the travel mug made of, and what does it cost?", "Stainless steel, 24.90 EUR."),
    ("Give me one tip for keeping houseplants healthy in winter.", "Water less often: growth slows."),
    ("How long is the warranty on the desk lamp?", "The desk lamp has a two-year warranty."),
]
VARIANTS = [  # (label, format, gguf type)
    ("merged", "merged", "f16"),
    ("adapter", "adapter", "f16"),
    ("gguf-f32", "gguf", "f32"),
    ("gguf-f16", "gguf", "f16"),
    ("gguf-q8_0", "gguf", "q8_0"),
    ("int8", "int8", "f16"),
]


def chat_ids(tokenizer: Any) -> list[torch.Tensor]:
    """Each fixed chat (user question + assistant answer) as token ids through the run's chat template."""
    rows = []
    for question, answer in CHATS:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        rows.append(tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids)
    return rows


def all_logits(model: Any, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(row).logits[0].float() for row in ids]


def compare(reference: list[torch.Tensor], got: list[torch.Tensor]) -> dict[str, float]:
    """Max relative logit error and top-1 agreement over every position of every chat."""
    err = max(float((g - r).abs().max()) for g, r in zip(got, reference, strict=True))
    scale = max(float(r.abs().max()) for r in reference)
    agree = sum(int((g.argmax(-1) == r.argmax(-1)).sum()) for g, r in zip(got, reference, strict=True))
    positions = sum(r.shape[0] for r in reference)
    return {"max_rel_err": err / scale, "max_abs_err": err, "top1_agreement": agree / positions}


def load_export(fmt: str, folder: Path) -> Any:
    """The exported model, loaded as a user of that format would (no tunesmith code except ``load_int8``)."""
    from transformers import AutoModelForCausalLM

    if fmt == "merged":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if fmt == "adapter":
        from peft import PeftModel

        base_dir = json.loads((folder / MANIFEST).read_text())["base_model"]["path"]
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        return PeftModel.from_pretrained(base, folder)
    if fmt == "gguf":
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    from tunesmith.export.int8 import load_int8

    return load_int8(folder)[0]


def measure(
    run_dir: Path, tmp: Path, reference: list[torch.Tensor], ids: list[torch.Tensor]
) -> dict[str, Any]:
    """Export, reload and compare each variant in turn (one exported model in memory at a time)."""
    results: dict[str, Any] = {}
    for label, fmt, gguf_type in VARIANTS:
        start = time.perf_counter()
        try:
            folder = export(run_dir, fmt, tmp / label, gguf_type=gguf_type)
        except (ConfigError, RunError) as err:  # adapter of a full-model run; gguf/int8 of a head run
            results[label] = {"skipped": str(err)}
            print(f"{label:<10} skipped: {err}", flush=True)
            continue
        seconds = time.perf_counter() - start
        model = load_export(fmt, folder).eval()
        row = compare(reference, all_logits(model, ids))
        del model
        row |= {
            "export_s": round(seconds, 2),
            "size_mb": round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1),
        }
        results[label] = row
        print(
            f"{label:<10} max rel logit err {row['max_rel_err']:.2e}"
            f"  top-1 {100 * row['top1_agreement']:5.1f} %"
            f"  export {seconds:6.1f} s  {row['size_mb']:7.1f} MB",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory, e.g. runs/demo")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "export_roundtrip.json", help="JSON results"
    )
    args = parser.parse_args()
    model, tokenizer, _ = load_trained(args.run_dir, merge=False)
    ids = chat_ids(tokenizer)
    reference = all_logits(model, ids)
    del model
    with tempfile.TemporaryDirectory(prefix="export-roundtrip-") as tmp:
        formats = measure(args.run_dir, Path(tmp), reference, ids)
    results = {
        "run_dir": str(args.run_dir.resolve()),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "chats": len(ids),
        "positions": sum(r.shape[1] for r in ids),
        "reference": "the run loaded by tunesmith (base + unmerged adapter, or model/), fp32",
        "formats": formats,
    }
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
