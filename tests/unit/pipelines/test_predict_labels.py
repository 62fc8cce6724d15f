"""Classification output for users: plain-text input (one per line), one label id per line or JSONL with
probabilities, on a label-verbaliser LoRA run; and TweetEval-style ``X_text.txt`` + ``X_labels.txt`` pairs."""

from __future__ import annotations

import json

import pytest

from tests.unit.methods.test_feature_extraction import _rows
from tunesmith import cli
from tunesmith.api import predict, train
from tunesmith.config import load_config
from tunesmith.data.formats import read_source
from tunesmith.errors import DataError


def test_tweeteval_pairs_read_as_classification(tmp_path):
    (tmp_path / "train_text.txt").write_text("so happy today\nangry now\n")
    (tmp_path / "train_labels.txt").write_text("1\n0\n")
    source = read_source(tmp_path / "train_text.txt", "auto", "stop", ["anger", "joy"])
    assert source.format == "classification"
    assert [(ex.text, ex.label, ex.line) for ex in source.examples] == [
        ("so happy today", 1, 1),
        ("angry now", 0, 2),
    ]
    (tmp_path / "train_labels.txt").write_text("1\n")
    with pytest.raises(DataError, match=r"train_labels.txt has 1 lines but .*train_text.txt has 2"):
        read_source(tmp_path / "train_text.txt", "auto", "stop", ["anger", "joy"])


def test_plain_text_predict_on_a_verbaliser_run(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(12, 0)))
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "name=cls",
            f"model.name={tiny_model_dir}",
            f"data.train={data}",
            "data.validation_fraction=0.25",
            "train.max_steps=1",
            "eval.compare_base=false",
            "eval.probes=false",
            "eval.icl_shots=[]",
        ],
    )
    train(cfg)
    texts = tmp_path / "tweets.txt"
    lines = ["a red apple", "", "rocket today"]  # the blank line still gets a label: ids stay aligned
    texts.write_text("\n".join(lines) + "\n")
    assert (
        cli.main(["predict", str(tmp_path / "cls"), "--data", str(texts), "--out", str(tmp_path / "l.txt")])
        == 0
    )
    ids = (tmp_path / "l.txt").read_text().splitlines()
    assert len(ids) == 3 and all(i in {"0", "1", "2"} for i in ids)
    rows = [
        json.loads(x) for x in predict(tmp_path / "cls", texts, tmp_path / "p.jsonl").read_text().splitlines()
    ]
    assert [str(r["label"]) for r in rows] == ids
    assert all(sum(r["probs"]) == pytest.approx(1.0, abs=1e-4) and len(r["probs"]) == 3 for r in rows)
    out = tmp_path / "p2.jsonl"
    assert (
        cli.main(
            ["predict", str(tmp_path / "cls"), "--data", str(texts), "--out", str(out), "--format", "jsonl"]
        )
        == 0
    )
    assert [json.loads(x)["label"] for x in out.read_text().splitlines()] == [r["label"] for r in rows]
