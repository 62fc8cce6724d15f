"""``tunesmith plan``: candidates from config alone, per-method memory, FLOPs-scaled speed, the advice."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from tests.conftest import make_tiny_llama
from tunesmith.cli import main
from tunesmith.config import LoraMethod
from tunesmith.errors import ModelError
from tunesmith.methods import prepare_model
from tunesmith.models.fused import fuse_gated_mlps
from tunesmith.models.memory import plan_memory
from tunesmith.plan import estimate as est
from tunesmith.plan.candidates import parameter_count, resolve_candidate
from tunesmith.plan.report import recommend

PUBLISHED = {  # parameter counts from the models' cards / safetensors metadata
    "HuggingFaceTB/SmolLM2-360M-Instruct": 361_821_120,
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1_711_376_384,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
}


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED))
def test_known_configs_give_the_published_parameter_counts(hub_id):
    assert parameter_count(resolve_candidate(hub_id)) == PUBLISHED[hub_id]


def test_short_names_and_local_directories(tiny_model_dir, default_tokenizer):
    assert resolve_candidate("qwen2.5-1.5b-instruct").name == "Qwen/Qwen2.5-1.5B-Instruct"
    local = resolve_candidate(str(tiny_model_dir))
    assert local.source == "local"
    real = make_tiny_llama(len(default_tokenizer))
    assert parameter_count(local) == sum(p.numel() for p in real.parameters())


def test_unknown_candidate_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"'nope/model' is neither.*Qwen/Qwen2.5-0.5B-Instruct"):
        resolve_candidate("nope/model")


def _shape(**kw) -> est.DataShape:
    base = dict(rows=4, width=32, targets=128, tokens=10_000, steps=10, precision="no", num_labels=None)
    return est.DataShape(**{**base, **kw})


def test_meta_plans_equal_the_real_models_plans(tiny_model_dir, default_tokenizer):
    """The planner over meta tensors gives what it gives over the real weights, per method."""
    candidate, shape = resolve_candidate(str(tiny_model_dir)), _shape()
    cfg = _config(tiny_model_dir)
    real = make_tiny_llama(len(default_tokenizer))
    assert fuse_gated_mlps(real) == 2  # as the loop trains it
    assert est.memory_full(candidate, shape, cfg) == plan_memory(real, 128, 128, width=32)
    lora = prepare_model(make_tiny_llama(len(default_tokenizer)), cfg.method)  # r=4, not the default 16
    fuse_gated_mlps(lora)
    assert isinstance(cfg.method, LoraMethod) and cfg.method.r == 4
    assert est.memory_lora(candidate, shape, cfg) == plan_memory(lora, 128, 128, width=32)


def test_methods_order_memory_as_expected():
    """Qwen2.5-1.5B, 4 x 256 tokens: full > LoRA > QLoRA > head, with QLoRA's weights ~4.5 bits a linear
    (the head keeps the whole fp32 base, but QLoRA's loss holds two 512 x 151,936 chunks of logits)."""
    candidate, shape = resolve_candidate("Qwen2.5-1.5B-Instruct"), _shape(width=256, targets=1024)
    cfg = None  # no LoRA settings in a config: LoRA's defaults
    plans = {m: fn(candidate, shape, cfg) for m, fn in est.METHODS.items()}
    totals = [plans[m].total_mb for m in ("full", "lora", "qlora", "head")]
    assert totals == sorted(totals, reverse=True)
    assert plans["full"].weights_mb == pytest.approx(PUBLISHED["Qwen/Qwen2.5-1.5B-Instruct"] * 4 / 2**20)
    linear = 1_543_714_304 - 151_936 * 1536 - (28 * 2 + 1) * 1536 - 28 * (1536 + 2 * 256)  # minus biases
    expected = (linear * 4.5 / 8 + (1_543_714_304 - linear) * 4) / 2**20 + plans["lora"].grads_mb
    assert plans["qlora"].weights_mb == pytest.approx(expected)
    assert plans["head"].grads_mb < 1  # the score head alone trains
    assert plans["qlora"].loss_mb == pytest.approx(2 * 512 * 151_936 * 4 / 2**20)
    assert plans["head"].loss_mb == 0


def test_speed_scales_by_flops_per_token(tiny_model_dir):
    cal = est.Calibration(tokens_per_s=600.0, params=1000, seconds=10, steps=5, width=128, runtime_mb=500)
    candidate = resolve_candidate(str(tiny_model_dir))
    params = parameter_count(candidate)
    rows = {m: est.estimate(candidate, m, _shape(), None, cal, 1e9, params) for m in ("full", "lora", "head")}
    assert rows["full"].tokens_per_s == pytest.approx(600.0 * 1000 / params)
    assert rows["lora"].tokens_per_s == pytest.approx(rows["full"].tokens_per_s * 6 / 4)
    assert rows["head"].seconds == pytest.approx(10_000 / (600.0 * 6000 / (2 * params)))
    plan = est.memory_full(candidate, _shape(), None)
    assert rows["full"].peak_mb == pytest.approx(500 + plan.total_mb)


def _row(model, params, method, peak, seconds):
    return est.Estimate(model, params, method, peak, peak <= 1000, 1.0, seconds)


def test_recommendation_is_the_largest_model_that_fits_in_time():
    cal = est.Calibration(100.0, 10, 10.0, 3, 128, 400)
    rows = [
        _row("small", 1, "full", 900, 60),
        _row("small", 1, "lora", 500, 40),
        _row("mid", 2, "lora", 800, 3600),
        _row("mid", 2, "head", 700, 1800),
        _row("big", 3, "lora", 5000, 7200),
    ]
    text = recommend(rows, _shape(), cal, 1000, "RAM", max_hours=2)
    assert text.startswith("Recommendation: mid with lora — about 800 MB of 1,000 MB (RAM) and 60 min")
    assert "The next larger option, big with lora, does not fit." in text
    assert "scaling estimate: 100 tokens/s" in text
    none = recommend(rows, _shape(), cal, 1000, "RAM", max_hours=0.001)
    assert none.startswith("Nothing fits 1,000 MB (RAM) and finishes 10,000 training tokens")


def _config(model_dir, tmp_path=None):
    from tunesmith.config import config_from_dict

    return config_from_dict(_config_dict(model_dir, tmp_path), "test")


def _config_dict(model_dir, tmp_path):
    data = str(tmp_path / "train.jsonl") if tmp_path else "unused.jsonl"
    return {
        "name": "tiny",
        "model": {"name": str(model_dir), "head": "classification"},
        "data": {"train": data, "validation_fraction": 0.0},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"epochs": 2, "batch_size": 4, "precision": "fp32"},
    }


def test_cli_prints_the_table_and_writes_json(tmp_path, tiny_model_dir, monkeypatch, capsys):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(["red", "blue", "sky", "sea"]) for _ in range(1 + i % 7)) for i in range(20)]
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": ["a", "b", "c"][i % 3]}) + "\n" for i, t in enumerate(texts))
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config_dict(tiny_model_dir, tmp_path)))
    cal = est.Calibration(tokens_per_s=50.0, params=135_000_000, seconds=10, steps=4, width=8, runtime_mb=400)
    monkeypatch.setattr(est, "calibrate", lambda *a: cal)  # the real one loads the default model (slow)
    out = tmp_path / "plan.json"
    args = ["plan", str(tmp_path / "c.yaml"), "--models", f"{tiny_model_dir},Qwen2.5-0.5B-Instruct"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| yes |") + printed.count("| no |") == 8  # 2 models x 4 methods
    plan = json.loads(out.read_text())
    assert plan["data"]["num_labels"] == 3
    assert plan["data"]["steps"] == 10  # 20 examples, batches of 4, 2 epochs
    assert [r["method"] for r in plan["rows"][:4]] == ["full", "lora", "qlora", "head"]
    assert "Recommendation: Qwen/Qwen2.5-0.5B-Instruct" in printed
