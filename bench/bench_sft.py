"""LoRA SFT on the default model: tunesmith vs TRL's SFTTrainer + PEFT, same data/model/LoRA/steps, one run.

    .venv/bin/python bench/bench_sft.py                 # defaults: 4 steps, global batch 8, max length 384
    .venv/bin/python bench/bench_sft.py --steps 20 --packing

Each side trains in its own subprocess (``--side tunesmith|trl``), so peak RSS is per side; both sides are
then scored by the *same* function (tunesmith's target-token validation loss on the same rendered split),
so "final validation loss" means one thing. The TRL side is written the way its docs show (a
prompt-completion conversational dataset, ``SFTConfig`` defaults), with ``bf16=False``: TRL's default bf16
on a CPU without AVX512-BF16 runs ~30x slower than fp32 (see tunesmith/train/precision.py), which would be
a meaningless win. Its other defaults (gradient checkpointing on) stay as a user gets them.

Reported per side: real (non-padding) tokens/s over the training call, peak RSS, final validation loss and
MFU against this machine's *measured* fp32/bf16 matmul peak (``matmul_peak_flops``), with training FLOPs
per token = 4 x base parameters + 6 x trainable (forward, input gradients; weight gradients only for the
trainable ones; attention scores ignored, <5% at these lengths). Writes bench/results/sft.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TUNESMITH_HOME", str(ROOT / ".tunesmith"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SOURCE = ROOT.parent / "shared" / "datasets" / "openai-format" / "gsm8k-chat"
RESULTS = ROOT / "bench" / "results"
KINDS = ("short", "full", "long")
"""Example shapes, cycled: answer line only (~70 tokens), worked solution (~200), three problems (~500)."""


# --------------------------------------------------------------------------------------------- the data


def _turns(row: dict[str, Any]) -> tuple[str, str, str]:
    by_role = {m["role"]: m["content"] for m in row["messages"]}
    return by_role.get("system", ""), by_role["user"], by_role["assistant"]


def build_sft_rows(source: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """A fixed, varied-length chat set: ``n`` rows cycling through ``KINDS``, a pure function of its inputs.

    ``long`` rows put three consecutive problems in one user turn and their three solutions in the answer,
    so short and long examples mix in every batch (what padding and packing are about).
    """
    order = list(range(len(source)))
    random.Random(seed).shuffle(order)
    rows, cursor = [], 0
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        take = 3 if kind == "long" else 1
        picked = [_turns(source[order[(cursor + k) % len(order)]]) for k in range(take)]
        cursor += take
        system = picked[0][0]
        if kind == "short":
            user, answer = picked[0][1], " " + picked[0][2].strip().splitlines()[-1]
        elif kind == "full":
            user, answer = picked[0][1], picked[0][2]
        else:
            user = "Solve these three problems.\n\n" + "\n\n".join(
                f"Problem {k + 1}: {p[1]}" for k, p in enumerate(picked)
            )
            answer = "\n\n".join(f"Problem {k + 1}:{p[2]}" for k, p in enumerate(picked))
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        rows.append({"messages": ([{"role": "system", "content": system}] if system else []) + messages})
    return rows


def to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational prompt-completion form: the loss goes on the completion only, like tunesmith's."""
    return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}


def write_data(directory: Path, n_train: int, n_val: int, seed: int = 0) -> dict[str, Path]:
    """Write train/validation as chat rows (tunesmith) and prompt-completion rows (TRL) in ``directory``."""
    paths = {}
    for split, src, n in (("train", "train.jsonl", n_train), ("validation", "validation.jsonl", n_val)):
        source = [json.loads(line) for line in (SOURCE / src).read_text().splitlines() if line.strip()]
        rows = build_sft_rows(source, n, seed)
        for form, convert in (("chat", lambda r: r), ("pc", to_prompt_completion)):
            path = directory / f"{split}.{form}.jsonl"
            path.write_text("".join(json.dumps(convert(r)) + "\n" for r in rows))
            paths[f"{split}.{form}"] = path
    return paths


# ------------------------------------------------------------------------------------------ arithmetic


def train_flops_per_token(base_params: int, trainable_params: int) -> float:
    """Model FLOPs per trained token: frozen weights cost forward + input-gradient (2 + 2), trainable ones
    also their weight gradient (+2). Recomputation (checkpointing) is not counted: that is what MFU means."""
    return 4.0 * base_params + 6.0 * trainable_params


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the measured matmul peak (0..1)."""
    return tokens_per_s * flops_per_token / peak_flops if peak_flops > 0 else 0.0


def matmul_peak_flops(dtype_name: str, size: int = 768, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square ``size`` matmul in ``dtype`` over ~``seconds`` (after a warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, packing of weights
    best, deadline, runs = 0.0, time.perf_counter() + seconds, 0
    while runs < 2 or time.perf_counter() < deadline:  # at least two timed runs, however slow the dtype
        runs += 1
        start = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def format_table(results: dict[str, Any]) -> str:
    """The side-by-side markdown table (tunesmith, TRL, ratio)."""
    ts, trl = results["sides"]["tunesmith"], results["sides"]["trl"]

    def ratio(key: str) -> str:
        return f"{ts[key] / trl[key]:.2f}x" if trl.get(key) else "-"

    rows = [
        ("real tokens/s", "tokens_per_s", "{:.1f}"),
        ("real tokens per CPU-second", "tokens_per_cpu_s", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("final val loss", "val_loss", "{:.4f}"),
        ("MFU vs fp32 peak", "mfu_fp32", "{:.2%}"),
        ("MFU vs bf16 peak", "mfu_bf16", "{:.2%}"),
        ("train seconds", "train_seconds", "{:.1f}"),
    ]
    lines = ["| | tunesmith | TRL SFTTrainer + PEFT | tunesmith / TRL |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        if key not in ts or key not in trl:
            continue
        lines.append(f"| {label} | {fmt.format(ts[key])} | {fmt.format(trl[key])} | {ratio(key)} |")
    peaks = results["matmul_peak_gflops"]
    lines.append("")
    lines.append(
        f"Measured matmul peak: fp32 {peaks['float32']:.1f} GFLOP/s, bf16 {peaks['bfloat16']:.1f} GFLOP/s; "
        f"{results['steps']} steps x global batch {results['batch']}, max length {results['max_length']}, "
        f"LoRA r={results['lora_r']} all-linear; {results['device']}."
    )
    return "\n".join(lines)


def add_mfu(results: dict[str, Any]) -> None:
    peaks = results["matmul_peak_gflops"]
    for side in results["sides"].values():
        per_token = train_flops_per_token(side["base_params"], side["trainable_params"])
        side["mfu_fp32"] = mfu(side["tokens_per_s"], per_token, peaks["float32"] * 1e9)
        side["mfu_bf16"] = mfu(side["tokens_per_s"], per_token, peaks["bfloat16"] * 1e9)


# ---------------------------------------------------------------------------------------------- driver


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="global batch (one micro-batch on both sides)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--packing", action="store_true", help="tunesmith side: train.packing true")
    parser.add_argument("--out", type=Path, default=RESULTS / "sft.json")
    parser.add_argument("--side", choices=["tunesmith", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.side:
        from bench.sft_sides import run_side

        run_side(args)
        return 0
    import torch

    results: dict[str, Any] = {
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "lora_r": args.lora_r,
        "packing": args.packing,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {os.cpu_count()} cores",
        "matmul_peak_gflops": {d: matmul_peak_flops(d) / 1e9 for d in ("float32", "bfloat16")},
        "sides": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp), args.n_train, args.n_val)
        for side in ("tunesmith", "trl"):
            side_out = Path(tmp) / f"{side}.json"
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
            cmd += ["--side", side, "--data-dir", tmp, "--side-out", str(side_out)]
            print(f"== {side}", flush=True)
            if subprocess.call(cmd) != 0 or not side_out.exists():
                print(f"bench_sft: the {side} side failed (see its output above)")
                return 1
            results["sides"][side] = json.loads(side_out.read_text())
    add_mfu(results)
    table = format_table(results)
    from tunesmith.io import write_json_atomic, write_text_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    write_text_atomic(args.out.with_suffix(".md"), table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
