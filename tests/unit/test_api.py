"""End to end on a tiny model: train -> run directory -> eval / predict / stock PEFT load; the CLI on top."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith import cli
from tunesmith.api import evaluate, predict, train
from tunesmith.config import load_config
from tunesmith.demo.catalogue import generate_demo_data
from tunesmith.errors import DataError


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    return generate_demo_data(
        tmp_path_factory.mktemp("data"),
        seed=0,
        n_products=2,
        train_templates_per_fact=3,
        include_overview=True,
        replay=False,
    )


def _cfg(tmp_path, model_dir, files, *extra):
    return load_config(
        None,
        [
            "name=tiny",
            f"output_dir={tmp_path}",
            f"model.name={model_dir}",
            f"data.train={files.train}",
            f"data.validation={files.validation}",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.lr=1e-3",
            "eval.max_new_tokens=4",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, demo_files):
    tmp = tmp_path_factory.mktemp("runs")
    summary = train(_cfg(tmp, tiny_model_dir, demo_files, "method.r=4"))
    return tmp / "tiny", summary


def test_run_directory_layout(lora_run):
    run_dir, summary = lora_run
    for name in (
        "config.yaml",
        "data_report.json",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "predictions_base_validation.jsonl",
        "predictions_tuned_validation.jsonl",
    ):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.rglob("*.bin")) and not list(run_dir.rglob("*.pt"))
    assert summary["status"] == "completed" and summary["train"]["steps"] == 3
    val = summary["eval"]["validation"]
    assert set(val) == {"base", "tuned"}
    assert val["tuned"]["n"] == 12  # 2 products x 6 attributes, one held-out phrasing each
    assert {"exact_match", "token_f1", "rouge_l", "loss", "perplexity"} <= set(val["tuned"])
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["splits"]["train"]["kept"] == 2 * 6 * 3 + 2
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3]
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()


def test_adapter_loads_in_stock_peft_with_same_logits(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.runs import load_trained

    run_dir, _ = lora_run
    ours, _, _ = load_trained(run_dir)
    stock = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "adapter"
    )
    stock.eval()
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-6)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    assert not torch.allclose(base, stock(input_ids=ids).logits, atol=1e-6)  # the adapter changed something


def test_eval_and_predict(lora_run, demo_files, tmp_path):
    run_dir, summary = lora_run
    metrics = evaluate(run_dir)
    assert metrics["validation"]["loss"] == pytest.approx(
        summary["eval"]["validation"]["tuned"]["loss"], abs=1e-5
    )
    out = predict(run_dir, demo_files.validation, tmp_path / "pred.jsonl")
    lines = out.read_text().splitlines()
    assert len(lines) == 12 and all("prediction" in json.loads(x) for x in lines)
    ours = [
        json.loads(x)["prediction"]
        for x in (run_dir / "predictions_tuned_validation.jsonl").read_text().splitlines()
    ]
    assert [json.loads(x)["prediction"] for x in lines] == ours  # same order, same greedy outputs


def test_full_method_saves_model_dir(tmp_path, tiny_model_dir, demo_files):
    summary = train(_cfg(tmp_path, tiny_model_dir, demo_files, "method.name=full", "eval.compare_base=false"))
    assert (tmp_path / "tiny" / "model" / "model.safetensors").exists()
    assert summary["trainable_params"] == summary["total_params"]
    assert set(summary["eval"]["validation"]) == {"tuned"}


def test_cli_train_eval_and_errors(tmp_path, tiny_model_dir, demo_files, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: clirun\noutput_dir: {tmp_path}\nmodel:\n  name: {tiny_model_dir}\n"
        f"data:\n  train: {demo_files.train}\n  validation: {demo_files.validation}\n"
        "train:\n  max_steps: 1\neval:\n  compare_base: false\n  max_new_tokens: 2\n  max_examples: 2\n"
    )
    assert cli.main(["train", str(cfg), "--set", "method.r=2"]) == 0
    out = capsys.readouterr().out
    assert "clirun done: 1 steps" in out
    assert f"run directory {tmp_path / 'clirun'} " in out  # where it is, not runs/<name>
    assert cli.main(["eval", str(tmp_path / "clirun")]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["n"] == 2
    assert cli.main(["train", str(cfg), "--set", "train.lrr=1"]) == 2
    assert "train.lrr: unknown key" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_malformed_training_file_stops_before_training(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [{"role": "user", "content": "hi"}\n'
    )
    cfg = load_config(None, [f"output_dir={tmp_path}", f"model.name={tiny_model_dir}", f"data.train={bad}"])
    with pytest.raises(DataError, match=r"bad.jsonl:2: "):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_base_eval_cache_is_keyed_by_what_the_numbers_depend_on(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import tunesmith.pipelines.lm as lm
    from tunesmith.config import config_from_dict

    calls: list[int] = []

    def fake_eval(model, tokenizer, data, task, cfg, save_as=None):
        calls.append(1)
        return {"validation": {"exact_match": float(len(calls))}}

    monkeypatch.setattr(lm, "evaluate_all", fake_eval)
    data = SimpleNamespace(report={"files": {"train": "hash-a"}})
    cfg = config_from_dict({"data": {"train": "a.jsonl"}}, "test")
    first = lm.base_eval(tmp_path, None, None, data, "generation", cfg)
    assert lm.base_eval(tmp_path, None, None, data, "generation", cfg) == first  # cached
    other_data = SimpleNamespace(report={"files": {"train": "hash-b"}})
    assert lm.base_eval(tmp_path, None, None, other_data, "generation", cfg) != first
    other_eval = config_from_dict({"data": {"train": "a.jsonl"}, "eval": {"max_new_tokens": 8}}, "test")
    lm.base_eval(tmp_path, None, None, other_data, "generation", other_eval)
    assert len(calls) == 3


def test_loraplus_reaches_the_optimizer_through_a_run(tmp_path, tiny_model_dir, demo_files):
    from safetensors.torch import load_file

    extra = ("method.r=4", "method.loraplus_lr_ratio=8", "train.max_steps=1", "train.scheduler=constant")
    train(
        _cfg(
            tmp_path,
            tiny_model_dir,
            demo_files,
            *extra,
            "train.max_grad_norm=null",
            "eval.compare_base=false",
        )
    )
    weights = load_file(str(tmp_path / "tiny" / "adapter" / "adapter_model.safetensors"))
    b_max = max(float(t.abs().max()) for n, t in weights.items() if "lora_B" in n)
    assert b_max == pytest.approx(8e-3, rel=1e-3)  # one Adam step at 8 x train.lr 1e-3 from B = 0
