"""Helpers of the kill -9 tests: run ``tunesmith train`` in a subprocess, SIGKILL it at a named fault point
(:mod:`tunesmith.faults`) or after a delay, ``--resume`` it, and read back what the run wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from safetensors.torch import load_file

WAIT_S = 300  # a loaded 2-core machine starts `tunesmith train` in seconds; this only bounds a hang

ROWS = [
    {"messages": [{"role": "user", "content": f"Spell {i}."}, {"role": "assistant", "content": f"n{i} " * 5}]}
    for i in range(20)
]
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lm_config(root: Path, model_dir: Path, name: str, **train) -> dict:
    """A LoRA run with dropout (so the RNG state matters), validation, and checkpoints every 2 steps."""
    data = write_jsonl(root / "train.jsonl", ROWS[:16])
    val = write_jsonl(root / "val.jsonl", ROWS[16:])
    return {
        "name": name,
        "output_dir": str(root / "runs"),
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 2, "dropout": 0.1},
        "data": {"train": str(data), "validation": str(val)},
        "train": {
            "max_steps": 6,
            "batch_size": 2,
            "lr": 1e-2,
            "save_every": 2,
            "eval_every": 3,
            "precision": "fp32",
            **train,
        },
        "eval": {
            "compare_base": False,
            "max_new_tokens": 2,
            "max_examples": 2,
            "probes": False,
            "icl_shots": [],
        },
    }


def staged_config(root: Path, model_dir: Path, name: str) -> dict:
    """A sequential run: two stages, each trained by the loop with its own checkpoints."""
    cfg = lm_config(root, model_dir, name, max_steps=4)
    first = write_jsonl(root / "first.jsonl", ROWS[:8])
    second = write_jsonl(root / "second.jsonl", ROWS[8:16])
    val = cfg["data"]["validation"]
    cfg["stages"] = [
        {"name": "first", "data": {"train": str(first), "validation": val}},
        {"name": "second", "data": {"train": str(second), "validation": val}},
    ]
    return cfg


def dpo_config(root: Path, model_dir: Path, name: str) -> dict:
    pairs = [
        {
            "prompt": f"Say a colour after {WORDS[i % 8]}.",
            "chosen": WORDS[i % 3],
            "rejected": WORDS[3 + i % 5],
        }
        for i in range(16)
    ]
    cfg = lm_config(root, model_dir, name)
    cfg["data"] = {"train": str(write_jsonl(root / "pairs.jsonl", pairs)), "validation_fraction": 0.25}
    cfg["objective"] = {"name": "dpo", "beta": 0.5}
    return cfg


def grpo_config(root: Path, model_dir: Path, name: str) -> dict:
    prompts = [
        {"messages": [{"role": "user", "content": f"Name a colour {i}."}], "answer": WORDS[i % 3]}
        for i in range(12)
    ]
    cfg = lm_config(root, model_dir, name, max_steps=4)
    cfg["data"] = {"train": str(write_jsonl(root / "prompts.jsonl", prompts)), "validation_fraction": 0.25}
    cfg["objective"] = {
        "name": "grpo",
        "grader": {"type": "string_check", "reference": "{{item.answer}}", "operation": "ilike"},
        "num_generations": 2,
        "max_new_tokens": 4,
    }
    return cfg


@dataclass
class Trainer:
    """One run's config on disk and the processes started on it."""

    root: Path
    cfg: dict
    log: list[str] = field(default_factory=list)  # what happened, one line per kill

    def __post_init__(self) -> None:
        self.path = self.root / f"{self.cfg['name']}.yaml"
        self.path.write_text(yaml.safe_dump(self.cfg))
        self.run_dir = Path(self.cfg["output_dir"]) / self.cfg["name"]
        self.started = False

    def start(self, fault: str | None = None, marker: Path | None = None) -> subprocess.Popen:
        # Pin what precision auto would pick too (the config says fp32): two processes must agree.
        env = {**os.environ, "TUNESMITH_CPU_BF16": "slow"}
        env.pop("TUNESMITH_FAULT", None)
        if fault is not None:
            env.update(TUNESMITH_FAULT=fault, TUNESMITH_FAULT_MARKER=str(marker))
        args = [sys.executable, "-m", "tunesmith.cli", "train", str(self.path)]
        args += ["--resume"] * self.started  # the first start is fresh; every later one resumes
        self.started = True
        out = (self.root / f"{self.cfg['name']}.out").open("ab")
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def run_in_process(self) -> None:
        """The uninterrupted reference, trained in this process: no start-up cost (seconds per process on a
        loaded machine), the same numbers (fp32 is pinned in the config)."""
        from tunesmith.api import train
        from tunesmith.config import load_config

        train(load_config(self.path))

    def finish(self) -> None:
        """Run (or resume) to the end; fail with the run's output when it does not exit 0."""
        code = self.start().wait(WAIT_S)
        assert code == 0, self.output()

    def kill_at(self, fault: str) -> None:
        """Start, wait until the process pauses at ``fault`` (``point@N``), SIGKILL it there."""
        marker = self.root / f"hit-{len(self.log)}"
        proc = self.start(fault, marker)
        deadline = time.monotonic() + WAIT_S
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        exited = proc.poll()
        if exited is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert marker.exists() and exited is None, (
            f"{fault} was never reached (exit {exited})\n{self.output()}"
        )
        self.log.append(f"{fault}: {marker.read_text().strip()}")

    def kill_after_rows(self, rows: int, seconds: float) -> None:
        """Start, wait until metrics.jsonl holds ``rows`` rows (a resume first cuts it back to its
        checkpoint), SIGKILL ``seconds`` later: inside the next step, validation pass or save, whatever the
        machine's speed."""
        metrics = self.run_dir / "metrics.jsonl"
        proc = self.start()
        deadline = time.monotonic() + WAIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().count("\n") >= rows:
                break
            time.sleep(0.005)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        on_disk = len(metric_rows(self.run_dir)) if metrics.exists() else 0
        self.log.append(
            f"{seconds * 1000:.0f} ms after row {rows}: exit {proc.returncode}, {on_disk} rows on disk"
        )

    def output(self) -> str:
        return (self.root / f"{self.cfg['name']}.out").read_text(errors="replace")[-4000:]


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[tuple[int, str, float]]:
    """(step, key, value) of every train and validation loss in metrics.jsonl, in file order."""
    keys = ("train_loss", "val_loss")
    return [(r["step"], k, r[k]) for r in metric_rows(run_dir) for k in keys if k in r]


def weights(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_run(crashed: Path, reference: Path, tol: float = 1e-6) -> int:
    """Per-step losses (each step once, in order) and final weights equal; returns the rows compared."""
    got, want = losses(crashed), losses(reference)
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want]
    for (step, key, a), (_, _, b) in zip(got, want, strict=True):
        assert abs(a - b) <= tol, f"step {step} {key}: {a} after kills, {b} uninterrupted"
    mine, theirs = weights(crashed), weights(reference)
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert (tensor - theirs[name]).abs().max().item() <= tol, name
    return len(got)
