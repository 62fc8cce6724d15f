"""LoRA DPO on the default model: tunesmith vs TRL's DPOTrainer + PEFT, same pairs/tokens/LoRA/steps, one run.

    .venv/bin/python bench/bench_dpo.py                 # defaults: 8 steps x 4 pairs, max length 256
    .venv/bin/python bench/bench_dpo.py --steps 2 --sides tunesmith-dpo,trl-dpo

Sides (each in its own subprocess, so peak RSS is per side):

- ``tunesmith-dpo``: tunesmith's DPO, the reference log-probs computed once (the adapter-free start model)
  before training; the reference pass and the training are timed apart and together.
- ``tunesmith-dpo-joint``: the same with ``objective.pair_backward: joint`` (chosen and rejected rows in one
  forward and backward: faster, twice the activations); ``tunesmith-dpo`` is the default, ``split``.
- ``tunesmith-dpo-gc``: the same with gradient checkpointing, the like-for-like column for ``trl-dpo``
  (DPOConfig turns gradient checkpointing on by default).
- ``tunesmith-sft``: SFT on the chosen answers of the same pairs, same steps and batch: the memory yardstick
  of issue #18's target (peak RSS of DPO with a cached reference <= 1.2x SFT's).
- ``trl-dpo``: DPOTrainer, PEFT LoraConfig r16/alpha 32/all-linear/dropout 0, DPOConfig defaults except
  max_steps, batch, lr 5e-5 cosine, beta 0.1, sigmoid loss, max_length, fp32, use_cpu. With PEFT, TRL gets
  the reference by disabling the adapter in every step (a second no-grad forward per step), tunesmith by one
  pass before training: that difference is what the speed ratio measures.
- ``trl-dpo-nogc``: the same with gradient checkpointing off, the like-for-like column for ``tunesmith-dpo``.

Both trainers get the same token ids: the pairs are rendered once by tunesmith's preparation
(``prepare_preferences``) and handed to DPOTrainer as prompt/chosen/rejected ids; the TRL side counts the
pairs its collator would build token for token identical and the table prints it.

Writes bench/results/dpo.json and .md. Ratios: tunesmith-dpo / trl-dpo-nogc and tunesmith-dpo-gc / trl-dpo
(like for like), and each DPO side's peak RSS / tunesmith-sft's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sides import run_sides, write_results  # noqa: E402  (needs ROOT on sys.path)

os.environ.setdefault("TUNESMITH_HOME", str(ROOT / ".tunesmith"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = ROOT.parent / "shared" / "datasets" / "openai-format" / "orca-dpo-pairs" / "pairs.jsonl"
RESULTS = ROOT / "bench" / "results"

SIDES = {
    "tunesmith-dpo": "tunesmith DPO",
    "tunesmith-dpo-joint": "tunesmith DPO, joint backward",
    "tunesmith-dpo-gc": "tunesmith DPO + grad. ckpt",
    "tunesmith-sft": "tunesmith SFT (chosen)",
    "trl-dpo": "TRL DPOTrainer (grad. ckpt, default)",
    "trl-dpo-nogc": "TRL DPOTrainer, no grad. ckpt",
}
"""Side key -> column title, in table order."""

PAIRS = {"tunesmith-dpo": "trl-dpo-nogc", "tunesmith-dpo-gc": "trl-dpo"}
"""Like-for-like comparisons: tunesmith side -> the TRL side with the same gradient checkpointing."""

ROWS = (
    ("real tokens/s (training)", "tokens_per_s", "{:.1f}"),
    ("real tokens per CPU-second", "tokens_per_cpu_s", "{:.1f}"),
    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ("training seconds", "train_seconds", "{:.1f}"),
    ("reference pass seconds", "reference_seconds", "{:.1f}"),
    ("reference + training seconds", "total_seconds", "{:.1f}"),
    ("last train loss", "train_loss_last", "{:.4f}"),
)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float) and b else "-"


def format_table(results: dict[str, Any]) -> str:
    """The side-by-side markdown table, then the like-for-like tunesmith/TRL ratios and DPO/SFT memory."""
    sides = results["sides"]
    titles = [SIDES.get(k, k) for k in sides]
    lines = ["| | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for label, key, fmt in ROWS:
        if not any(key in side for side in sides.values()):
            continue
        values = [fmt.format(side[key]) if side.get(key) is not None else "-" for side in sides.values()]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    lines.append("")
    for ours, theirs in PAIRS.items():
        if ours in sides and theirs in sides:
            a, b = sides[ours], sides[theirs]
            lines.append(
                f"- {SIDES[ours]} / {SIDES[theirs]}: tokens/s {_ratio(a['tokens_per_s'], b['tokens_per_s'])} "
                f"(incl. reference pass {_ratio(a['tokens'] / a['total_seconds'], b['tokens_per_s'])}), "
                f"tokens per CPU-s {_ratio(a['tokens_per_cpu_s'], b['tokens_per_cpu_s'])}, "
                f"peak RSS {_ratio(a['peak_rss_mb'], b['peak_rss_mb'])}"
            )
    if "tunesmith-sft" in sides:
        sft = sides["tunesmith-sft"]["peak_rss_mb"]
        for key in ("tunesmith-dpo", "tunesmith-dpo-joint", "tunesmith-dpo-gc"):
            if key in sides:
                ratio = sides[key]["peak_rss_mb"] / sft
                verdict = "meets" if ratio <= 1.2 else "misses"
                lines.append(f"- peak RSS {SIDES[key]} / SFT: {ratio:.2f}x ({verdict} the <= 1.2x target)")
    trl = next((sides[k] for k in ("trl-dpo", "trl-dpo-nogc") if k in sides), None)
    if trl is not None:
        lines.append(f"- pairs token-identical on both sides: {trl['identical_pairs']}/{trl['pairs']}")
    lines.append("")
    lines.append(
        f"{results['steps']} steps x {results['batch']} pairs, max length {results['max_length']}, "
        f"LoRA r={results['lora_r']} all-linear, lr 5e-5 cosine, beta 0.1 sigmoid, fp32; "
        f"model {results['model']}; {results['device']}, {results['threads']} threads."
    )
    return "\n".join(lines)


def _sides(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIDES]
    if unknown or not names:
        raise SystemExit(f"--sides {spec!r}: choose from {', '.join(SIDES)}")
    return [n for n in SIDES if n in names]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="pairs per optimizer step (one micro-batch)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--data-file", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "dpo.json")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--model-path", help="a local model directory instead of the embedded default")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run each side in its own process, one after the other; write the JSON and the table."""
    args = _parse(argv)
    if args.side:
        from bench.dpo_sides import run_side

        run_side(args)
        return 0
    import torch

    results: dict[str, Any] = {
        "model": args.model_path or "default",
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "lora_r": args.lora_r,
        "data": str(args.data_file),
        "threads": torch.get_num_threads(),
        "device": f"CPU, {os.cpu_count()} cores",
        "sides": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        sides = run_sides(__file__, argv if argv is not None else sys.argv[1:], _sides(args.sides), Path(tmp))
    if sides is None:
        return 1
    results["sides"] = sides
    write_results(args.out, results, format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
