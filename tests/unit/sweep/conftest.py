"""A tiny classification-head base config for sweeps: each trial trains a 2-layer random model for a few
steps (seconds), with validation passes for the pruner."""

from __future__ import annotations

import json
import random

import pytest
import yaml

WORDS = {"fruit": "apple", "space": "rocket", "sea": "fish"}
FILLER = ["the", "a", "today", "we", "saw", "big", "small", "red"]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))] + [WORDS[label]] * 2
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


@pytest.fixture
def base_config(tmp_path, tiny_model_dir):
    """(path of the base YAML, its dict): 6 steps of 4, validation every 2 steps."""
    for split, n, seed in (("train", 24, 0), ("validation", 9, 1)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)))
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(tiny_model_dir), "head": "classification"},
        "data": {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "eval_every": 2, "precision": "fp32"},
        "eval": {"probes": False, "icl_shots": []},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def write_space(path, space: dict) -> str:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)
