"""Shared fixtures: the real default tokenizer (converted once into a session cache) and tiny random models.

Tiny models are built from a config in the test (2 layers, hidden 64) so a training step takes milliseconds;
they share the default model's tokenizer so rendering and loss masks are the real ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# One cache for the whole suite (and for developers' repeated runs): the default model is converted once.
os.environ.setdefault("TUNESMITH_HOME", str(Path(__file__).resolve().parents[1] / ".tunesmith"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def default_tokenizer():
    from tunesmith.models.loading import load_tokenizer

    return load_tokenizer("default")


def make_tiny_llama(vocab_size: int, seed: int = 0):
    """A 2-layer, hidden-64 Llama with random weights: fast, deterministic, real architecture."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_model(default_tokenizer):
    return make_tiny_llama(len(default_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer):
    """A tiny random Llama saved like a real HF model directory (safetensors + the default tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-base")
    make_tiny_llama(len(default_tokenizer)).save_pretrained(path, safe_serialization=True)
    default_tokenizer.save_pretrained(path)
    return path


def pytest_terminal_summary(terminalreporter):
    """Fuzz cases run per target (tests/fuzz.py), for docs/robustness.md."""
    fuzz = sys.modules.get("tests.fuzz")  # imported by the fuzz tests only (a GPU check runs without them)
    if fuzz is None:
        return
    if fuzz.CASES:
        cases = ", ".join(f"{target} {n}" for target, n in sorted(fuzz.CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {cases} (total {sum(fuzz.CASES.values())})")
        terminalreporter.write_line(
            "fuzz outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(fuzz.OUTCOMES.items()))
        )
