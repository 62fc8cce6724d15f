"""LoRA SFT on the default model: tunesmith vs TRL's SFTTrainer + PEFT, same data/model/LoRA/steps, one run.

    .venv/bin/python bench/bench_sft.py                 # defaults: 12 steps, global batch 8, max length 384
    .venv/bin/python bench/bench_sft.py --steps 4 --sides tunesmith,trl
    .venv/bin/python bench/bench_sft.py --model llama-1b      # a random ~1.1B Llama, for GPU speed runs

Sides: tunesmith as configured by default, one column per lever changed (gradient checkpointing, packing,
length grouping off, logits at every position: see ``SIDES``), and TRL. Each trains in its own subprocess,
so peak RSS is per side; all are then scored by the *same* function (tunesmith's target-token validation
loss on the same rendered split), so "final validation loss" means one thing. The TRL side is written the
way its docs show (a prompt-completion conversational dataset, ``SFTConfig`` defaults), with ``bf16`` only
on GPU (as tunesmith's ``precision: auto``): TRL's default bf16 on a CPU without AVX512-BF16 runs ~30x
slower than fp32 (see tunesmith/train/precision.py), which would be a meaningless win. Its other defaults
(gradient checkpointing on) stay as a user gets them.

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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sides import run_sides, write_results  # noqa: E402  (needs ROOT on sys.path)
from tunesmith.io import read_jsonl  # noqa: E402

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


def write_data(
    directory: Path, n_train: int, n_val: int, seed: int = 0, source_dir: Path = SOURCE
) -> dict[str, Path]:
    """Write train/validation as chat rows (tunesmith) and prompt-completion rows (TRL) in ``directory``."""
    paths = {}
    for split, src, n in (("train", "train.jsonl", n_train), ("validation", "validation.jsonl", n_val)):
        source = read_jsonl(source_dir / src)
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


def matmul_peak_flops(dtype_name: str, size: int | None = None, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square ``size`` matmul in ``dtype`` over ~``seconds`` (after a warm-up); the size
    defaults to 768 on CPU (the default model's hidden size) and 8192 on GPU (large enough to saturate it)."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = size or (8192 if device == "cuda" else 768)
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


SIDES = {
    "tunesmith": "tunesmith",
    "tunesmith-fp32": "tunesmith in fp32",
    "tunesmith-gc": "tunesmith + grad. checkpointing",
    "tunesmith-packed": "tunesmith + packing",
    "tunesmith-ungrouped": "tunesmith, random batches",
    "tunesmith-full-logits": "tunesmith, logits at every position",
    "trl": "TRL SFTTrainer + PEFT",
}
"""Side key -> column title. The tunesmith variants each change one lever of its defaults (TrainConfig
fields in ``bench.sft_sides.SIDE_SETTINGS``): ``-fp32`` pins fp32 where ``auto`` would pick bf16 (TRL trains
in fp32 on every CPU here: the like-for-like column for precision); ``-gc`` turns on gradient checkpointing,
the memory setting TRL's SFTConfig has on by default (the like-for-like column for peak RSS); ``-packed``
packs rows; ``-ungrouped`` turns length grouping off (random batches, like TRL's); ``-full-logits`` computes
the loss through the model's own forward (vocabulary logits at every position, prompts included) instead of
the output head on target positions only (a lever measurement, not a setting users have)."""


def format_table(results: dict[str, Any]) -> str:
    """The side-by-side markdown table: one column per side, then each tunesmith side's ratio to TRL."""
    sides = results["sides"]
    trl = sides["trl"]
    ours = [k for k in sides if k != "trl"]
    rows = [
        ("real tokens/s", "tokens_per_s", "{:.1f}"),
        ("real tokens per CPU-second", "tokens_per_cpu_s", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak GPU memory (MB)", "peak_gpu_mb", "{:.0f}"),
        ("final val loss", "val_loss", "{:.4f}"),
        ("MFU vs fp32 peak", "mfu_fp32", "{:.2%}"),
        ("MFU vs bf16 peak", "mfu_bf16", "{:.2%}"),
        ("train seconds", "train_seconds", "{:.1f}"),
    ]
    titles = [SIDES.get(k, k) for k in sides] + [f"{SIDES.get(k, k)} / TRL" for k in ours]
    lines = ["| | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    peaks = results["matmul_peak_gflops"]
    # MFU against a bf16 peak below fp32's (a CPU without AVX512-BF16: ~1 GFLOP/s) reads as thousands of
    # percent and says nothing: training runs fp32 there, so that row is left out.
    skip = set() if peaks["bfloat16"] > peaks["float32"] else {"mfu_bf16"}
    for label, key, fmt in rows:
        if key in skip or any(key not in side for side in sides.values()):
            continue
        values = [fmt.format(side[key]) for side in sides.values()]
        ratios = [f"{sides[k][key] / trl[key]:.2f}x" if trl[key] else "-" for k in ours]
        lines.append(f"| {label} | " + " | ".join(values + ratios) + " |")
    lines.append("")
    lines.append(
        f"Measured matmul peak: fp32 {peaks['float32']:.1f} GFLOP/s, bf16 {peaks['bfloat16']:.1f} GFLOP/s; "
        f"{results['steps']} steps x global batch {results['batch']}, max length {results['max_length']}, "
        f"LoRA r={results['lora_r']} all-linear; model {results.get('model', 'default')}; "
        f"{results['device']}."
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
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8, help="global batch (one micro-batch on both sides)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="default",
        help="default: the embedded SmolLM2-135M; llama-1b: a random ~1.1B Llama (GPU speed runs)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "sft.json")
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="a directory with train.jsonl and validation.jsonl chats"
    )
    parser.add_argument(
        "--tokenizer", default="default", help="tokenizer directory of --model llama-1b (an offline GPU)"
    )
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"comma-separated, from {', '.join(SIDES)} (trl is required)",
    )
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


MODELS = {
    "default": None,
    # TinyLlama's shape (22 blocks, hidden 2048, GQA 32/4 heads) with the default tokenizer's vocabulary:
    # ~1.1B parameters; speed does not depend on the weights, so random ones stand in for a download.
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
}


def write_random_llama(directory: Path, shape: dict[str, Any], tokenizer_name: str = "default") -> Path:
    """A randomly initialised Llama of ``shape`` (seed 0) with the default model's tokenizer (or the one at
    ``tokenizer_name``), saved as safetensors in ``directory``: both sides load it by path, as they would
    a downloaded model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _sides(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIDES]
    if unknown or "trl" not in names:
        raise SystemExit(f"--sides {spec!r}: choose from {', '.join(SIDES)}, trl included (the baseline)")
    return [n for n in SIDES if n in names]  # table order: ours first, TRL last


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.side:
        from bench.sft_sides import run_side

        run_side(args)
        return 0
    import torch

    results: dict[str, Any] = {
        "model": args.model,
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "lora_r": args.lora_r,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {os.cpu_count()} cores",
        "matmul_peak_gflops": {d: matmul_peak_flops(d) / 1e9 for d in ("float32", "bfloat16")},
        "sides": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_data(Path(tmp), args.n_train, args.n_val, source_dir=args.source)
        extra = []
        if MODELS[args.model] is not None:
            model_dir = write_random_llama(Path(tmp) / "model", MODELS[args.model], args.tokenizer)
            extra = ["--model-path", str(model_dir)]
        args_of_sides = [*(argv if argv is not None else sys.argv[1:]), *extra, "--data-dir", tmp]
        sides = run_sides(__file__, args_of_sides, _sides(args.sides), Path(tmp))
    if sides is None:
        return 1
    results["sides"] = sides
    add_mfu(results)
    write_results(args.out, results, format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
