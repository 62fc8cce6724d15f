"""int8 export vs fp32 on the default model (SmolLM2-135M): CPU latency and logit agreement.

    .venv/bin/python bench/bench_int8.py [--runs 3] [--threads 1] [--out bench/results/int8.json (default)]

Models: fp32; ``int8`` = the real export path (``save_int8`` to a temp folder, then ``load_int8``); and
``naive_dynamic`` = ``torch.ao.quantization.quantize_dynamic`` on every nn.Linear, the textbook recipe, for
comparison. Latency: greedy generation of exactly 32 new tokens after a 50-token prompt, batch 1, median
of --runs (after one warm-up); tokens/s = 32 / seconds. Quality: over a few chat prompts plus the fp32
model's own continuations, at every position: top-1 agreement with fp32 and mean KL(fp32 || model) in nats.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TUNESMITH_HOME", str(Path(__file__).resolve().parents[1] / ".tunesmith"))

from tunesmith.export.int8 import WEIGHTS_NAME, load_int8, save_int8
from tunesmith.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

PROMPT_TOKENS = 50
NEW_TOKENS = 32
QUESTIONS = [
    "Explain in two sentences why the sky looks blue during the day and red at sunset.",
    "Write a short, friendly email asking a colleague to review my pull request by Friday.",
    "List three tips for keeping houseplants healthy in winter, one line each.",
    "What is the difference between a list and a tuple in Python? Keep it brief.",
]


def _prompt_ids(tokenizer: Any, question: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt").input_ids


def _latency_prompt(tokenizer: Any) -> torch.Tensor:
    """Exactly PROMPT_TOKENS tokens: the chat prompts joined, cut from the left so it ends in a turn start."""
    ids = torch.cat([_prompt_ids(tokenizer, q) for q in QUESTIONS], dim=1)
    return ids[:, -PROMPT_TOKENS:]


def tokens_per_second(model: Any, prompt: torch.Tensor, pad_id: int, runs: int) -> float:
    def once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,  # no early stop: every run times the same work
                do_sample=False,
                pad_token_id=pad_id,
            )
        assert out.shape[1] == prompt.shape[1] + NEW_TOKENS
        return time.perf_counter() - start

    once()  # warm-up: first-call allocations and kernel selection
    return NEW_TOKENS / statistics.median(once() for _ in range(runs))


def agreement(reference: Any, model: Any, tokenizer: Any) -> dict[str, float]:
    """Top-1 agreement and mean KL(reference || model) over prompts + the reference's greedy continuations."""
    agree, kl, positions = 0, 0.0, 0
    for question in QUESTIONS:
        prompt = _prompt_ids(tokenizer, question)
        with torch.no_grad():
            seq = reference.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            ref = reference(seq).logits[0].log_softmax(-1)
            got = model(seq).logits[0].log_softmax(-1)
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        kl += float((ref.exp() * (ref - got)).sum(-1).sum())
        positions += ref.shape[0]
    return {"top1_agreement": agree / positions, "mean_kl_nats": kl / positions, "positions": positions}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="timed generations per model (median reported)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "int8.json",
        help="JSON results",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer("default")
    fp32 = load_causal_lm("default").eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_int8(fp32, tokenizer, Path(tmp))
        int8_mb = (Path(tmp) / WEIGHTS_NAME).stat().st_size / 1e6
        int8, _ = load_int8(tmp)
    fp32_mb = (Path(resolve_model_path("default")) / "model.safetensors").stat().st_size / 1e6

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        naive = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, torch.qint8)

    prompt = _latency_prompt(tokenizer)
    results: dict[str, Any] = {
        "model": "default (SmolLM2-135M-Instruct)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prompt_tokens": prompt.shape[1],
        "new_tokens": NEW_TOKENS,
        "fp32_weights_mb": round(fp32_mb, 1),
        "int8_weights_mb": round(int8_mb, 1),
    }
    for name, model in (("fp32", fp32), ("int8", int8), ("naive_dynamic", naive)):
        speed = tokens_per_second(model, prompt, tokenizer.pad_token_id, args.runs)
        results[name] = {"tokens_per_s": round(speed, 2)}
        if model is not fp32:
            results[name].update(agreement(fp32, model, tokenizer))
    results["int8_speedup"] = round(results["int8"]["tokens_per_s"] / results["fp32"]["tokens_per_s"], 2)
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
