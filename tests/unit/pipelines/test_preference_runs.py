"""The preference and RL run kinds end to end on a tiny model: dpo (+ a reference-free and the kto
variant), reward, grpo — each trains through the API, writes its summary and evaluates base vs tuned; the
reference log-probs are computed once and read from the cache on a re-run."""

from __future__ import annotations

import json

import pytest

import tunesmith.pipelines.preference as preference
from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.pipelines.registry import evaluate, predict
from tunesmith.pipelines.scoring import reward_scorer

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(n: int) -> list[dict]:
    return [
        {
            "prompt": f"Say a colour after {WORDS[i % 8]}.",
            "chosen": WORDS[i % 3],
            "rejected": f"{WORDS[3 + i % 5]} {WORDS[i % 8]}",
        }
        for i in range(n)
    ]


def _cfg(tmp_path, model_dir, data, *extra):
    return load_config(
        None,
        [
            f"output_dir={tmp_path}",
            f"model.name={model_dir}",
            f"data.train={data}",
            "data.validation_fraction=0.25",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.lr=1e-2",
            "train.precision=fp32",
            *extra,
        ],
    )


def test_dpo_run_caches_the_reference_and_reports_preferences(tmp_path, tiny_model_dir, monkeypatch):
    data = _write(tmp_path / "pairs.jsonl", _pairs(16))
    calls = []
    real = preference.logps_of_rows
    monkeypatch.setattr(preference, "logps_of_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    summary = train(
        _cfg(tmp_path, tiny_model_dir, data, "name=dpo", "objective.name=dpo", "objective.beta=0.5")
    )
    assert summary["task"] == "preference" and summary["train"]["steps"] == 3
    val = summary["eval"]["validation"]
    assert val["base"]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at the start
    assert val["tuned"]["loss"] < val["base"]["loss"]
    assert {"reward_accuracy", "reward_margin", "prefers_chosen"} <= val["tuned"].keys()
    assert (tmp_path / "dpo" / "reference_logps.safetensors").exists() and len(
        calls
    ) == 2  # train, validation
    rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert "reward_margin" in rows[0] and "val_reward_accuracy" in rows[-1]
    calls.clear()
    train(_cfg(tmp_path, tiny_model_dir, data, "name=dpo", "objective.name=dpo", "objective.beta=0.5"))
    assert calls == []  # the re-run read the cache
    again = evaluate(tmp_path / "dpo")
    assert again["validation"]["loss"] == pytest.approx(val["tuned"]["loss"], abs=1e-4)


@pytest.mark.parametrize("loss", ["simpo", "orpo", "ipo", "hinge"])
def test_dpo_variants_train(tmp_path, tiny_model_dir, loss):
    data = _write(tmp_path / "pairs.jsonl", _pairs(12))
    summary = train(
        _cfg(tmp_path, tiny_model_dir, data, f"name={loss}", "objective.name=dpo", f"objective.loss={loss}")
    )
    assert summary["eval"]["validation"]["tuned"]["loss"] < summary["eval"]["validation"]["base"]["loss"]
    assert (tmp_path / loss / "reference_logps.safetensors").exists() == (loss in ("ipo", "hinge"))


def test_kto_run_on_unpaired_rows(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"}
        for r in _pairs(8)
        for k in ("chosen", "rejected")
    ]
    summary = train(
        _cfg(
            tmp_path,
            tiny_model_dir,
            _write(tmp_path / "kto.jsonl", rows),
            "name=kto",
            "objective.name=dpo",
            "objective.loss=kto",
        )
    )
    assert summary["train"]["steps"] == 3 and "reward" in summary["eval"]["validation"]["tuned"]


def test_reward_model_run_and_its_scorer(tmp_path, tiny_model_dir):
    data = _write(tmp_path / "pairs.jsonl", _pairs(16))
    summary = train(
        _cfg(tmp_path, tiny_model_dir, data, "name=rm", "objective.name=reward", "train.max_steps=6")
    )
    val = summary["eval"]["validation"]
    assert 0 <= val["base"]["pair_accuracy"] <= 1 and {"pair_accuracy", "margin"} <= val["tuned"].keys()
    assert summary["train"]["final_val_loss"] is not None
    score = reward_scorer(tmp_path / "rm")
    items = [{"messages": [{"role": "user", "content": "Say a colour after cat."}]}] * 2
    scores = score(["red", "dog cat"], items)
    assert len(scores) == 2 and scores[0] != scores[1]
    assert evaluate(tmp_path / "rm")["validation"]["pair_accuracy"] == val["tuned"]["pair_accuracy"]
    with pytest.raises(ConfigError, match=r"is a reward model: .*evaluate"):
        predict(tmp_path / "rm", data, tmp_path / "out.jsonl")
    # The reward model judges a DPO run's answers against the base's on the validation prompts.
    dpo = train(
        _cfg(
            tmp_path,
            tiny_model_dir,
            data,
            "name=judged",
            "objective.name=dpo",
            f"eval.judge={tmp_path / 'rm'}",
        )
    )
    judged = dpo["eval"]["validation"]["judged"]
    assert judged["model_judged"] and judged["n"] == 4 == judged["wins"] + judged["losses"] + judged["ties"]
    assert 0 <= judged["win_rate"] <= 1 and (tmp_path / "judged" / "predictions_tuned_judged.jsonl").exists()


def test_grpo_run_grades_base_and_tuned(tmp_path, tiny_model_dir):
    rows = [
        {"messages": [{"role": "user", "content": f"Name a colour {i}."}], "answer": WORDS[i % 3]}
        for i in range(12)
    ]
    summary = train(
        _cfg(
            tmp_path,
            tiny_model_dir,
            _write(tmp_path / "prompts.jsonl", rows),
            "name=grpo",
            "objective.name=grpo",
            "objective.grader={type: string_check, reference: '{{item.answer}}', operation: ilike}",
            "objective.num_generations=2",
            "objective.max_new_tokens=4",
            "train.max_steps=2",
            "train.batch_size=2",
        )
    )
    val = summary["eval"]["validation"]
    assert {"score", "full_score_share"} <= val["base"].keys() and val["tuned"]["examples"] == 3
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "generate_s", "grade_s"} <= rows[0].keys()
    assert (tmp_path / "grpo" / "predictions_tuned_validation.jsonl").exists()


def test_grpo_kl_needs_a_switchable_adapter(tmp_path, tiny_model_dir):
    cfg = _cfg(
        tmp_path,
        tiny_model_dir,
        tmp_path / "x.jsonl",
        "objective.name=grpo",
        "objective.grader={type: string_check, reference: x}",
        "objective.beta=0.1",
        "method.name=full",
    )
    with pytest.raises(ConfigError, match="needs a reference"):
        train(cfg)
