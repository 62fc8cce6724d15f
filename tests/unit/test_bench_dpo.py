"""The DPO benchmark's plumbing: every side on a tiny random model for one step, its JSON, the token check."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from bench.bench_dpo import DATA, _sides, format_table
from bench.dpo_sides import count_identical, prepare_pairs, prompt_length, run_side, trl_rows

pytestmark = pytest.mark.skipif(not DATA.exists(), reason="shared orca-dpo-pairs data not present")
HAS_TRL = importlib.util.find_spec("trl") is not None
FIELDS = {"tokens", "train_seconds", "tokens_per_s", "cpu_seconds", "tokens_per_cpu_s", "peak_rss_mb"}


def _args(tmp_path, model_dir, side: str) -> argparse.Namespace:
    return argparse.Namespace(
        side=side,
        side_out=tmp_path / f"{side}.json",
        model_path=str(model_dir),
        data_file=DATA,
        steps=1,
        batch=2,
        max_length=128,
        lora_r=4,
    )


def test_pairs_are_tunesmith_rendered_and_cut_at_max_length(default_tokenizer):
    split = prepare_pairs(DATA, default_tokenizer, max_length=128, n_pairs=3)
    assert len(split) == 3 and all(len(ids) <= 128 for ids in split.chosen_ids + split.rejected_ids)
    rows = trl_rows(split)
    for row, c_ids, c_labels, r_ids in zip(
        rows, split.chosen_ids, split.chosen_labels, split.rejected_ids, strict=True
    ):
        n = prompt_length(c_labels)
        assert (
            row["prompt_ids"] == c_ids[:n] == r_ids[:n] and row["prompt_ids"] + row["rejected_ids"] == r_ids
        )
    assert count_identical(split, rows, 128) == 3
    rows[1] = {**rows[1], "chosen_ids": rows[1]["chosen_ids"][:-1]}  # one token short: no longer identical
    assert count_identical(split, rows, 128) == 2


@pytest.mark.parametrize("side", ["tunesmith-dpo", "tunesmith-dpo-joint", "tunesmith-sft"])
def test_tunesmith_sides_write_their_json(tmp_path, tiny_model_dir, default_tokenizer, side):
    args = _args(tmp_path, tiny_model_dir, side)
    run_side(args)
    out = json.loads(args.side_out.read_text())
    assert out.keys() >= FIELDS and out["pairs"] == 2
    split = prepare_pairs(DATA, default_tokenizer, 128, 2)
    rows = split.chosen_ids + ([] if side == "tunesmith-sft" else split.rejected_ids)
    assert out["tokens"] == sum(len(ids) for ids in rows)  # one step over both pairs: every real token once
    assert (out["reference_seconds"] > 0) == (side != "tunesmith-sft")
    assert out["total_seconds"] == pytest.approx(out["train_seconds"] + out["reference_seconds"])


@pytest.mark.skipif(not HAS_TRL, reason="trl (the bench extra) is not installed")
def test_trl_side_trains_on_the_same_tokens(tmp_path, tiny_model_dir, default_tokenizer):
    args = _args(tmp_path, tiny_model_dir, "trl-dpo-nogc")
    run_side(args)
    out = json.loads(args.side_out.read_text())
    assert out.keys() >= FIELDS
    assert out["identical_pairs"] == out["pairs"] == 2
    split = prepare_pairs(DATA, default_tokenizer, 128, 2)
    assert out["tokens"] == sum(len(ids) for ids in split.chosen_ids + split.rejected_ids)


def _side(tps: float, rss: float, **extra) -> dict:
    return {
        "tokens": 1000,
        "tokens_per_s": tps,
        "tokens_per_cpu_s": tps / 2,
        "peak_rss_mb": rss,
        "train_seconds": 1000 / tps,
        **extra,
    }


def test_table_has_like_for_like_ratios_and_the_memory_target():
    ref = {"reference_seconds": 2.0, "total_seconds": 12.0}
    results = {
        "model": "default",
        "steps": 8,
        "batch": 4,
        "max_length": 256,
        "lora_r": 16,
        "device": "CPU, 2 cores",
        "threads": 2,
        "sides": {
            "tunesmith-dpo": _side(100.0, 1300.0, **ref),
            "tunesmith-sft": _side(150.0, 1000.0),
            "trl-dpo-nogc": _side(50.0, 2600.0, identical_pairs=32, pairs=32),
        },
    }
    lines = format_table(results).splitlines()
    assert lines[0] == "| | tunesmith DPO | tunesmith SFT (chosen) | TRL DPOTrainer, no grad. ckpt |"
    assert "| real tokens/s (training) | 100.0 | 150.0 | 50.0 |" in lines
    assert "| reference pass seconds | 2.0 | - | - |" in lines
    assert (
        "- tunesmith DPO / TRL DPOTrainer, no grad. ckpt: tokens/s 2.00x (incl. reference pass 1.67x), "
        "tokens per CPU-s 2.00x, peak RSS 0.50x"
    ) in lines
    assert "- peak RSS tunesmith DPO / SFT: 1.30x (misses the <= 1.2x target)" in lines
    assert "- pairs token-identical on both sides: 32/32" in lines


def test_sides_keep_table_order_and_reject_unknown_ones():
    assert _sides("trl-dpo, tunesmith-dpo") == ["tunesmith-dpo", "trl-dpo"]
    with pytest.raises(SystemExit, match="choose from"):
        _sides("unsloth")
