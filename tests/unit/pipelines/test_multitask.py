"""Multi-task runs (``data.tasks``): exact mixing quotas, prefixes, per-task evaluation, config errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tunesmith.api import evaluate, train
from tunesmith.config import config_from_dict, load_config
from tunesmith.data.mixing import draw_rows, mixing_probabilities, quota_counts, with_prefix
from tunesmith.data.render import render_prompt
from tunesmith.errors import ConfigError
from tunesmith.pipelines.multitask import mix_tasks, prepare_tasks

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "multi_task.yaml"


def write_task(folder: Path, name: str, n_train: int, labels: list[str], seed: int) -> dict[str, str]:
    """A small classification task: JSONL train/validation whose label word appears in the text."""
    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("validation", 6)):
        rows = []
        for i in range(n):
            label = labels[i % len(labels)]
            words = [rng.choice(["a", "the", "very", "so", "now"]) for _ in range(3)] + [label]
            rows.append({"text": f"{name} " + " ".join(words), "label": label})
        path = folder / f"{name}_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[split] = str(path)
    return paths


@pytest.fixture
def two_tasks(tmp_path):
    mood = write_task(tmp_path, "mood", 30, ["happy", "sad"], 0)
    irony = write_task(tmp_path, "irony", 10, ["plain", "ironic", "unsure"], 1)
    return [
        {"name": "mood", **mood, "prefix": "[mood] "},
        {"name": "irony", **irony, "prefix": "[irony] ", "weight": 3.0},
    ]


def _cfg(tmp_path, model_dir, tasks, *extra):
    raw = {
        "name": "multi",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir)},
        "data": {"tasks": tasks},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3},
        "eval": {"max_new_tokens": 4, "probes": False, "icl_shots": []},
    }
    return config_from_dict(raw) if not extra else _with(raw, extra)


def _with(raw, extra):
    from tunesmith.config import apply_overrides

    return config_from_dict(apply_overrides(raw, list(extra)))


def test_mixing_probabilities_follow_size_weights_and_temperature():
    assert mixing_probabilities([30, 10], [1, 3], "proportional", 2.0) == [0.75, 0.25]
    assert mixing_probabilities([30, 10], [1, 3], "weights", 2.0) == [0.25, 0.75]
    # p_i ~ n_i^(1/T): T=2 -> sqrt(900)=30 vs sqrt(100)=10; T=1 is proportional; huge T is ~uniform.
    assert mixing_probabilities([900, 100], [1, 1], "temperature", 2.0) == pytest.approx([0.75, 0.25])
    assert mixing_probabilities([900, 100], [1, 1], "temperature", 1.0) == pytest.approx([0.9, 0.1])
    assert mixing_probabilities([900, 100], [1, 1], "temperature", 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)


def test_quota_counts_are_exact_and_sum_to_total():
    assert quota_counts([0.75, 0.25], 40) == [30, 10]
    assert quota_counts([1 / 3, 1 / 3, 1 / 3], 10) == [4, 3, 3]  # the remainder goes to the first task
    assert sum(quota_counts([0.123, 0.456, 0.421], 997)) == 997


def test_draw_rows_upsamples_evenly_and_is_seeded():
    rows = draw_rows(10, 25, random.Random(0))
    assert sorted(Counter(rows).values()) == [2] * 5 + [3] * 5  # two whole passes plus half of a third
    assert rows == draw_rows(10, 25, random.Random(0))
    assert len(set(draw_rows(10, 7, random.Random(1)))) == 7  # below the size: without replacement


@pytest.mark.parametrize(
    ("mixing", "expected"),
    [
        ("proportional", {"mood": 30, "irony": 10}),
        ("weights", {"mood": 10, "irony": 30}),  # weights 1 : 3 of 40 rows
        ("temperature", {"mood": 25, "irony": 15}),  # sqrt(30) : sqrt(10) = 0.634 : 0.366 of 40
    ],
)
def test_mixed_training_set_has_the_configured_counts(
    tmp_path, default_tokenizer, two_tasks, mixing, expected
):
    cfg = _cfg(tmp_path, "unused", two_tasks, f"data.mixing={mixing}", "data.temperature=2")
    tasks = prepare_tasks(cfg, cfg.data, default_tokenizer, tmp_path / "prepared", "main")
    mixed, report = mix_tasks(tasks, cfg.data, seed=0)
    # Count rows by where they came from: each task's rendered prompt starts with its own prefix.
    prefix_ids = {t.name: set(map(tuple, t.data.train.input_ids)) for t in tasks}
    drawn = Counter(next(n for n, ids in prefix_ids.items() if tuple(row) in ids) for row in mixed.input_ids)
    assert dict(drawn) == expected
    assert {name: r["drawn"] for name, r in report.items()} == expected
    assert mix_tasks(tasks, cfg.data, seed=0)[0].input_ids == mixed.input_ids  # seeded


def test_prefix_is_in_training_and_evaluation_prompts(tmp_path, default_tokenizer, two_tasks):
    cfg = _cfg(tmp_path, "unused", two_tasks)
    tasks = prepare_tasks(cfg, cfg.data, default_tokenizer, tmp_path / "prepared", "main")
    for t in tasks:
        prefix = f"[{t.name}] "
        assert prefix in default_tokenizer.decode(t.data.train.input_ids[0])
        ex = t.data.validation.examples[0]
        prompt = default_tokenizer.decode(render_prompt(ex, default_tokenizer, None, t.cfg.data.label_prompt))
        assert f"Text: {prefix}{t.name} " in prompt
        assert t.data.label_names == (["happy", "sad"] if t.name == "mood" else ["ironic", "plain", "unsure"])


def test_with_prefix_prefixes_the_first_user_turn_without_touching_the_input():
    from tunesmith.data.formats import Example

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    ex = Example("f", 1, "chat", messages=messages)
    out = with_prefix(ex, "[t] ")
    assert out.messages[1]["content"] == "[t] hi" and out.messages[0]["content"] == "s"
    assert messages[1]["content"] == "hi"  # the input example is unchanged


def test_multitask_run_reports_each_task(tmp_path, tiny_model_dir, two_tasks):
    summary = train(_cfg(tmp_path, tiny_model_dir, two_tasks))
    run_dir = tmp_path / "runs" / "multi"
    stored = json.loads((run_dir / "summary.json").read_text())
    assert stored["status"] == "completed" and stored["train"]["steps"] == 3
    assert set(stored["tasks"]) == {"mood/validation", "irony/validation"}
    for key, labels in (("mood/validation", 2), ("irony/validation", 3)):
        row = stored["tasks"][key]
        assert row["metric"] == "f1_macro" and row["n"] == 6
        tuned = stored["eval"][key]["tuned"]
        assert row["tuned"] == tuned["f1_macro"] and len(tuned["labels"]) == labels
        assert row["base"] == stored["eval"][key]["base"]["f1_macro"]
    assert stored["mixing"] == summary["mixing"]
    assert {r["drawn"] for r in stored["mixing"].values()} == {30, 10}
    for name in (
        "adapter/adapter_model.safetensors",
        "predictions_tuned_irony_validation.jsonl",
        "report.html",
    ):
        assert (run_dir / name).exists(), name
    html = (run_dir / "report.html").read_text()
    assert "Per-task evaluation" in html and "irony" in html
    again = evaluate(run_dir)  # `tunesmith eval RUN` on a multi-task run: every task's own split
    assert again["irony"]["validation"]["f1_macro"] == stored["eval"]["irony/validation"]["tuned"]["f1_macro"]


def test_cli_headline_shows_each_task_and_no_single_speed():
    from tunesmith.cli import headline

    summary = {
        "name": "multi",
        "train": {"steps": 150, "stages": 1, "last_stage_steps": 150},  # multi-task: no tokens_per_s
        "timings": {"total_s": 1800.4},
        "peak_memory_mb": 5120.0,
        "tasks": {
            "emotion/validation": {"metric": "f1_macro", "tuned": 0.6142},
            "irony/validation": {"metric": "f1_macro", "tuned": 0.5679},
        },
    }
    assert headline(summary) == (
        "tunesmith: multi done: 150 steps, 1800s, peak 5120 MB; "
        "emotion/validation f1_macro=0.6142, irony/validation f1_macro=0.5679"
    )
    single = {**summary, "tasks": None, "train": {"steps": 3, "tokens_per_s": 99.6}}
    single["eval"] = {"validation": {"tuned": {"accuracy": 0.5, "n": 4, "f1_macro": 0.25}}}
    assert (
        headline(single)
        == "tunesmith: multi done: 3 steps, 100 tok/s, 1800s, peak 5120 MB; accuracy=0.5000, f1_macro=0.2500"
    )


def test_unknown_task_key_and_empty_tasks_are_named(tmp_path, two_tasks):
    bad = [{**two_tasks[0], "wieght": 2}]
    with pytest.raises(ConfigError, match=r"data\.tasks\.0\.wieght: unknown key"):
        _cfg(tmp_path, "unused", bad)
    with pytest.raises(ConfigError, match=r"data\.tasks: List should have at least 1 item"):
        _cfg(tmp_path, "unused", [])
    with pytest.raises(ConfigError, match=r"task names must be unique; repeated: \['mood'\]"):
        _cfg(tmp_path, "unused", [two_tasks[0], two_tasks[0]])
    with pytest.raises(ConfigError, match=r"set either data\.tasks or data\.train"):
        _cfg(tmp_path, "unused", two_tasks, "data.train=x.jsonl")


def test_recipe_names_existing_tweeteval_files():
    cfg = load_config(RECIPE)
    root = RECIPE.parents[1]
    assert [t.name for t in cfg.data.tasks] == ["emotion", "irony", "hate", "offensive"]
    assert cfg.data.mixing == "temperature" and cfg.method.name == "lora"
    for task in cfg.data.tasks:
        assert (root / task.train).exists() and (root / task.validation).exists()
    assert yaml.safe_load(RECIPE.read_text())["data"]["tasks"][0]["prefix"]
