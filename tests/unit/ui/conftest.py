"""A runs directory built by hand for the UI tests: tiny LoRA runs on a tiny random base, with the files a
finished run writes (config, summary, metrics, data report, predictions), and no training (seconds, not
minutes). The live run's metrics.jsonl is appended to by the tests themselves, as the trainer would."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import make_tiny_llama
from tunesmith.config import RunConfig
from tunesmith.report.html import write_report
from tunesmith.runs import RunDir

KEY = "ui-test-key-0123456789abcdef"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y chromium chromium-driver (Debian) and pip install -e '.[dev]' (Playwright)"
LABELS = ["positive", "negative"]
PROMPTS = ["Say red", "Say blue", "Say green"]


def pytest_terminal_summary(terminalreporter) -> None:
    """Say why the browser tests did not run, at the end of a plain ``make test`` (no -rs needed)."""
    if not CHROMIUM.exists():
        terminalreporter.write_line(f"tunesmith ui: browser tests skipped, no {CHROMIUM}; install: {INSTALL}")


def loss_rows(n: int, start: int = 1) -> list[dict]:
    return [
        {"step": s, "train_loss": 3.0 - 0.1 * s, "lr": 1e-4, "total_steps": 10}
        for s in range(start, start + n)
    ]


def write_run(
    root: Path, name: str, base: Path, tokenizer, task: str, seed: int, finished: bool = True
) -> RunDir:
    """A run directory: config, metrics, data report; ``finished``: an adapter, summary, predictions too."""
    from peft import LoraConfig, get_peft_model

    run = RunDir(root / name)
    data = root.parent / f"{name}-validation.jsonl"
    data.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS)
    )
    cfg = RunConfig(name=name, output_dir=str(root), model={"name": str(base)})
    run.start(cfg)
    run.write_data_report(
        {
            "files": {"validation": {"path": str(data)}},
            "label_names": LABELS if task == "classification" else None,
        }
    )
    if not finished:
        return run
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(make_tiny_llama(len(tokenizer)), lora).save_pretrained(run.adapter)
    tokenizer.save_pretrained(run.adapter)
    curve = [{**r, "train_loss": r["train_loss"] - 0.05 * seed * r["step"]} for r in loss_rows(5)]
    rows = [*curve, {"step": 5, "val_loss": 2.6 - 0.1 * seed, "val_accuracy": 0.5 + 0.1 * seed}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {
        "accuracy": round(0.5 + 0.1 * seed, 2),
        "f1_macro": round(0.4 + 0.1 * seed, 2),
        "per_class_f1": {"positive": 0.7, "negative": 0.1 * seed},
    }
    base_metrics = {"accuracy": 0.5, "f1_macro": 0.3}
    run.write_summary(
        {
            "name": name,
            "status": "completed",
            "method": "lora",
            "model": str(base),
            "task": task,
            "eval": {"validation": {"base": base_metrics, "tuned": metrics}},
            "timings": {"total_s": 12.5 * seed},
            "peak_memory_mb": 100.0 * seed,
            "gates": {"passed": seed == 1, "failures": []},
            "forgetting": {"knowledge": {"delta": -0.01 * seed}},
        }
    )
    preds = run.predictions("tuned").with_name(run.predictions("tuned").name + "_validation.jsonl")
    preds.write_text("".join(json.dumps({"prediction": f"answer {i}"}) + "\n" for i in range(len(PROMPTS))))
    return run


@pytest.fixture(scope="module")
def runs_env(tmp_path_factory, default_tokenizer):
    """runs/chat (generation, finished), runs/triage (classification, finished), runs/live (training)."""
    top = tmp_path_factory.mktemp("ui")
    base = top / "base"
    make_tiny_llama(len(default_tokenizer)).save_pretrained(base)
    default_tokenizer.save_pretrained(base)
    root = top / "runs"
    root.mkdir()
    chat = write_run(root, "chat", base, default_tokenizer, "generation", 1)
    write_report(chat.path)
    triage = write_run(root, "triage", base, default_tokenizer, "classification", 2)
    live = write_run(root, "live", base, default_tokenizer, "generation", 3, finished=False)
    return SimpleNamespace(root=root, base=base, chat=chat, triage=triage, live=live, top=top)
