"""Sequential runs (``stages:``): weight hand-over, replay counts, the forgetting matrix, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import tunesmith.pipelines.staged as sequential
from tests.unit.pipelines.test_multitask import write_task
from tunesmith.api import train
from tunesmith.config import config_from_dict, dump_config, load_config
from tunesmith.errors import ConfigError

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "sequential.yaml"


def _raw(tmp_path, model_dir, first, second, replay=0.25):
    return {
        "name": "seq",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir)},
        "method": {"name": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2},
        "eval": {"probes": False, "icl_shots": []},
        "stages": [
            {"name": "first", "data": {"train": first["train"], "validation": first["validation"]}},
            {
                "name": "second",
                "data": {"train": second["train"], "validation": second["validation"]},
                "train": {"max_steps": 3},
                "replay": replay,
            },
        ],
    }


def _files(folder):
    return (
        write_task(folder, "first", 30, ["yes", "no"], 0),
        write_task(folder, "second", 12, ["x", "y", "z"], 1),
    )


@pytest.fixture
def files(tmp_path):
    return _files(tmp_path)


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory, tiny_model_dir):
    """One two-stage run (then the same again with resume) for the module, the loop wrapped to record the
    trainable weights at each stage's start and end and the rows it trained on."""
    tmp_path = tmp_path_factory.mktemp("seq")
    calls = []
    real = sequential.train_loop

    def spy(model, rows, *args, **kwargs):
        def weights():
            return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

        call = {"start": weights(), "rows": [tuple(x) for x in rows.input_ids]}
        result = real(model, rows, *args, **kwargs)
        calls.append({**call, "end": weights(), "steps": result.steps})
        return result

    raw = _raw(tmp_path, tiny_model_dir, *_files(tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequential, "train_loop", spy)
        summary = train(config_from_dict(raw))
        again = train(config_from_dict(raw), resume=True)
    return tmp_path / "runs" / "seq", summary, calls, again


def test_stage_two_starts_from_stage_one_weights(seq_run):
    calls = seq_run[2]
    assert [c["steps"] for c in calls] == [2, 3]  # stage 2's own max_steps; the resumed run trained nothing
    first, second = calls
    assert first["start"].keys() == second["start"].keys()
    assert any(not torch.equal(first["start"][n], first["end"][n]) for n in first["end"])
    for name, tensor in first["end"].items():  # the hand-over: same adapter, same values
        assert torch.equal(second["start"][name], tensor), name


def test_replay_adds_the_exact_share_of_earlier_rows(seq_run):
    _, summary, calls, _ = seq_run
    stage_one_rows = set(calls[0]["rows"])
    replayed = [row for row in calls[1]["rows"] if row in stage_one_rows]
    assert len(replayed) == 8  # 0.25 x 30 = 7.5, rounded half up
    assert len(calls[1]["rows"]) == 12 + 8 and len(set(replayed)) == 8  # without replacement
    assert [s["replay_rows"] for s in summary["stages"]] == [0, 8]
    assert [s["train_rows"] for s in summary["stages"]] == [30, 20]


def test_forgetting_matrix_shape_and_diagonal(seq_run):
    run_dir, summary, _, _ = seq_run
    matrix = summary["forgetting_matrix"]
    assert matrix["rows"] == ["first", "second"] and matrix["columns"] == ["first", "second"]
    assert matrix["metric"] == {"first": "f1_macro", "second": "f1_macro"}
    values = matrix["values"]
    assert len(values) == 2 and all(len(row) == 2 for row in values)
    assert values[0][1] is None and all(isinstance(v, float) for v in (values[0][0], *values[1]))
    for k, name in enumerate(["first", "second"]):  # the diagonal is each stage's own evaluation
        stage = json.loads((run_dir / "stages" / f"{k + 1:02d}-{name}" / "stage.json").read_text())
        assert values[k][k] == stage["eval"][name]["validation"]["f1_macro"]
    first_scores = [values[0][0], values[1][0]]
    assert matrix["forgetting"]["first"] == pytest.approx(max(first_scores) - first_scores[-1])
    assert len(matrix["base"]) == 2
    assert values[1] == [summary["eval"][f"{n}/validation"]["tuned"]["f1_macro"] for n in ("first", "second")]


def test_each_stage_is_saved_and_reported(seq_run):
    run_dir, summary, _, _ = seq_run
    for name in (
        "stages/01-first/adapter/adapter_model.safetensors",
        "stages/01-first/end/trainable.safetensors",
        "stages/02-second/metrics.jsonl",
        "adapter/adapter_model.safetensors",
        "predictions_tuned_first_validation.jsonl",
        "metrics.jsonl",
    ):
        assert (run_dir / name).exists(), name
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5]  # steps continue over stages
    html = (run_dir / "report.html").read_text()
    assert "forgetting matrix" in html and html.count("data:image/png;base64,") >= 2
    assert summary["status"] == "completed" and summary["train"]["steps"] == 5


def test_resume_skips_finished_stages(seq_run):
    _, summary, calls, again = seq_run
    assert len(calls) == 2  # train(..., resume=True) found both stages finished and retrained neither
    assert again["forgetting_matrix"]["values"] == summary["forgetting_matrix"]["values"]
    assert again["status"] == "completed" and again["train"]["steps"] == 5


def test_bad_stage_configs_name_the_key(tmp_path, files):
    raw = _raw(tmp_path, "unused", *files)
    with pytest.raises(ConfigError, match=r"stages: List should have at least 1 item"):
        config_from_dict({**raw, "stages": []})
    raw["stages"][1]["data"]["trian"] = "x.jsonl"
    with pytest.raises(ConfigError, match=r"stages\.1\.data\.trian: unknown key"):
        config_from_dict(raw)
    raw["stages"][1]["data"].pop("trian")
    raw["stages"][1]["replay"] = 1.5
    with pytest.raises(ConfigError, match=r"stages\.1\.replay: Input should be less than or equal to 1"):
        config_from_dict(raw)


def test_stage_sections_override_the_top_level_key_by_key(tmp_path, files):
    raw = _raw(tmp_path, "unused", *files)
    raw["data"] = {"max_length": 64, "validation": "top.jsonl"}
    raw["train"]["early_stopping"] = {"patience": 3, "min_delta": 0.1}
    raw["stages"][1]["train"]["early_stopping"] = {"patience": 1}
    cfg = config_from_dict(raw)
    (_, data1, train1, _), (_, data2, train2, replay) = sequential.plan_stages(cfg)
    assert data1.max_length == data2.max_length == 64 and data2.train == files[1]["train"]
    assert train1.max_steps == 2 and train2.max_steps == 3 and replay == 0.25
    assert train2.early_stopping.patience == 1 and train2.early_stopping.min_delta == 0.1
    # config.yaml keeps a stage's override partial, so reloading it gives the same stages
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_recipe_names_existing_tweeteval_files():
    cfg = load_config(RECIPE)
    root = RECIPE.parents[1]
    assert [s.name for s in cfg.stages] == ["offensive", "emotion"] and cfg.stages[1].replay == 0.1
    for _, data, _, _ in sequential.plan_stages(cfg):
        assert (root / data.train).exists() and (root / data.validation).exists()
