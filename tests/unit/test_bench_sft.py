"""The benchmark harness's pure parts: data builder, FLOP/MFU arithmetic, the markdown table."""

from __future__ import annotations

import json

import pytest

from bench.bench_sft import (
    SOURCE,
    _sides,
    add_mfu,
    build_sft_rows,
    format_table,
    mfu,
    to_prompt_completion,
    train_flops_per_token,
    write_data,
)


def _source(n: int = 6) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Be accurate."},
                {"role": "user", "content": f"Q{i}?"},
                {"role": "assistant", "content": f" step {i}\nmore {i}\n#### {i}"},
            ]
        }
        for i in range(n)
    ]


def test_build_sft_rows_cycles_short_full_long_and_is_seeded():
    rows = build_sft_rows(_source(), 6, seed=1)
    assert rows == build_sft_rows(_source(), 6, seed=1)
    assert rows != build_sft_rows(_source(), 6, seed=2)
    answers = [r["messages"][-1]["content"] for r in rows]
    assert answers[0].startswith(" #### ") and "\n" not in answers[0]  # short: the answer line only
    assert answers[1].count("####") == 1 and "step" in answers[1]  # full: the worked solution
    assert answers[2].count("####") == 3 and "Problem 3:" in answers[2]  # long: three problems
    assert rows[2]["messages"][1]["content"].startswith("Solve these three problems.")
    assert all(r["messages"][0] == {"role": "system", "content": "Be accurate."} for r in rows)
    # Each source row is used once before any repeats (6 rows: 1 + 1 + 3 + 1).
    used = [m["content"] for r in rows[:4] for m in r["messages"] if m["role"] == "user"]
    assert sum(text.count("Q") for text in used) == 6


def test_prompt_completion_form_splits_the_last_turn():
    row = build_sft_rows(_source(), 1, seed=0)[0]
    pc = to_prompt_completion(row)
    assert pc["prompt"] == row["messages"][:-1] and pc["completion"] == row["messages"][-1:]


@pytest.mark.skipif(not (SOURCE / "train.jsonl").exists(), reason="shared gsm8k-chat data not present")
def test_write_data_has_mixed_lengths(tmp_path):
    paths = write_data(tmp_path, n_train=9, n_val=3)
    # --source: the same rows from a copy elsewhere (the GPU check carries one)
    copy, out = tmp_path / "copy", tmp_path / "again"
    copy.mkdir()
    out.mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        (copy / name).write_bytes((SOURCE / name).read_bytes())
    again = write_data(out, n_train=9, n_val=3, source_dir=copy)
    assert again["train.chat"].read_bytes() == paths["train.chat"].read_bytes()
    chat = [json.loads(x) for x in paths["train.chat"].read_text().splitlines()]
    pc = [json.loads(x) for x in paths["train.pc"].read_text().splitlines()]
    assert len(chat) == len(pc) == 9 and len(paths["validation.chat"].read_text().splitlines()) == 3
    sizes = [len(json.dumps(r)) for r in chat[:3]]
    assert sizes[0] < sizes[1] < sizes[2]


def test_flops_and_mfu_arithmetic():
    assert train_flops_per_token(100, 10) == 460.0  # 4 x 100 frozen + 6 x 10 trainable
    assert mfu(tokens_per_s=50.0, flops_per_token=460.0, peak_flops=46_000.0) == pytest.approx(0.5)
    assert mfu(50.0, 460.0, 0.0) == 0.0


def _results() -> dict:
    side = {"base_params": 1_000_000, "trainable_params": 10_000, "train_seconds": 10.0}
    return {
        "steps": 4,
        "batch": 8,
        "max_length": 384,
        "lora_r": 16,
        "device": "CPU, 2 cores",
        "matmul_peak_gflops": {"float32": 80.0, "bfloat16": 8.0},
        "sides": {
            "tunesmith": {
                **side,
                "tokens_per_s": 200.0,
                "peak_rss_mb": 1400.0,
                "val_loss": 1.5,
                "tokens_per_cpu_s": 90.0,
            },
            "trl": {**side, "tokens_per_s": 100.0, "peak_rss_mb": 2000.0, "val_loss": 1.5},
        },
    }


def test_add_mfu_uses_measured_peaks():
    results = _results()
    add_mfu(results)
    ts = results["sides"]["tunesmith"]
    assert ts["mfu_fp32"] == pytest.approx(200.0 * 4_060_000 / 80e9)
    assert ts["mfu_bf16"] == pytest.approx(10 * ts["mfu_fp32"])


def test_format_table_side_by_side_with_ratios():
    results = _results()
    add_mfu(results)
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0] == "| | tunesmith | TRL SFTTrainer + PEFT | tunesmith / TRL |"
    assert "| real tokens/s | 200.0 | 100.0 | 2.00x |" in lines
    assert "| peak RSS (MB) | 1400 | 2000 | 0.70x |" in lines
    assert not any("CPU-second" in line for line in lines)  # a row only when both sides have it
    assert "| final val loss | 1.5000 | 1.5000 | 1.00x |" in lines
    assert not any("bf16 peak" in line for line in lines)  # bf16 slower than fp32 here: no bf16 MFU row
    results["matmul_peak_gflops"]["bfloat16"] = 160.0
    assert any(line.startswith("| MFU vs bf16 peak |") for line in format_table(results).splitlines())
    assert "fp32 80.0 GFLOP/s, bf16 8.0 GFLOP/s; 4 steps x global batch 8, max length 384" in table


def test_a_checkpointing_side_gets_its_own_column_and_ratio():
    results = _results()
    gc = {**results["sides"]["tunesmith"], "tokens_per_s": 150.0, "peak_rss_mb": 500.0}
    results["sides"] = {
        "tunesmith": results["sides"]["tunesmith"],
        "tunesmith-gc": gc,
        "trl": results["sides"]["trl"],
    }
    add_mfu(results)
    lines = format_table(results).splitlines()
    assert lines[0] == (
        "| | tunesmith | tunesmith + grad. checkpointing | TRL SFTTrainer + PEFT | tunesmith / TRL "
        "| tunesmith + grad. checkpointing / TRL |"
    )
    assert "| peak RSS (MB) | 1400 | 500 | 2000 | 0.70x | 0.25x |" in lines


def test_sides_keep_table_order_and_need_the_baseline():
    assert _sides("trl, tunesmith-gc") == ["tunesmith-gc", "trl"]
    for bad in ("tunesmith", "trl,unsloth"):
        with pytest.raises(SystemExit, match="trl included"):
            _sides(bad)


def test_random_llama_is_saved_with_the_default_tokenizer_and_loads_by_path(tmp_path, default_tokenizer):
    from bench.bench_sft import write_random_llama
    from tunesmith.models.loading import load_causal_lm, load_tokenizer

    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    path = write_random_llama(tmp_path / "m", {**shape, "num_key_value_heads": 2})
    model = load_causal_lm(str(path))
    assert model.config.vocab_size == len(default_tokenizer) and model.config.num_hidden_layers == 2
    assert load_tokenizer(str(path))("a b").input_ids == default_tokenizer("a b").input_ids
    assert (path / "model.safetensors").exists()
    # Offline (bench/gpu_check.sh): the tokenizer from a directory, as bench/gpu_prep.sh saves it.
    default_tokenizer.save_pretrained(tmp_path / "tok")
    again = write_random_llama(tmp_path / "m2", {**shape, "num_key_value_heads": 2}, str(tmp_path / "tok"))
    assert load_tokenizer(str(again))("a b").input_ids == default_tokenizer("a b").input_ids


def test_the_gpu_speed_model_has_about_a_billion_parameters(default_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.bench_sft import MODELS

    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(default_tokenizer), **MODELS["llama-1b"]))
    assert 1.0e9 < sum(p.numel() for p in model.parameters()) < 1.4e9
