"""cv, bias, drift and compare: pure functions on known inputs and the CLI on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunesmith import cli
from tunesmith.api import train
from tunesmith.config import load_config
from tunesmith.data.formats import Example
from tunesmith.errors import DataError
from tunesmith.evaluate.bias import counterfactual, flip_stats, group_metrics, load_substitutions, substitute
from tunesmith.evaluate.drift import embedding_stats, js_divergence, verdict
from tunesmith.pipelines.cv import aggregate, fold_indices


def _cls(text: str, label: int, **extra) -> Example:
    return Example("f.jsonl", 1, "classification", text=text, label=label, extra=extra)


# ------------------------------------------------------------------------------------------------ cv


def test_stratified_folds_keep_label_ratio_and_groups_apart():
    examples = [_cls(f"t{i}", i % 2, user=f"u{i // 2}") for i in range(12)]
    folds = fold_indices(examples, 3, seed=0)
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(12))
    for _, va in folds:
        assert sorted(examples[i].label for i in va) == [0, 0, 1, 1]
    for tr, va in fold_indices(examples, 3, seed=0, group_column="user"):
        assert not {examples[i].extra["user"] for i in tr} & {examples[i].extra["user"] for i in va}
    with pytest.raises(DataError, match="a class has only 1 examples: too few for 2 stratified folds"):
        fold_indices([_cls("a", 0), _cls("b", 1), _cls("c", 1)], 2, seed=0)
    with pytest.raises(DataError, match="no 'team' column"):
        fold_indices(examples, 3, seed=0, group_column="team")


def test_aggregate_mean_and_sample_std():
    out = aggregate([{"accuracy": 0.5, "loss": 1.0}, {"accuracy": 1.0, "loss": 3.0}])
    assert out == {"accuracy": {"mean": 0.75, "std": 0.353553}, "loss": {"mean": 2.0, "std": 1.414214}}


# ------------------------------------------------------------------------------------------------ bias


def test_substitute_swaps_both_ways_keeping_case():
    pairs = load_substitutions()["gender"]
    assert substitute("He met his wife. SHE laughed.", pairs) == "She met her husband. HE laughed."
    assert substitute("Theme: the heat", pairs) == "Theme: the heat"  # whole words only
    assert counterfactual(_cls("a cat sat", 0), pairs) is None


def test_load_substitutions_extends_and_validates(tmp_path):
    extra = tmp_path / "pairs.json"
    extra.write_text(json.dumps({"gender": [["lad", "lass"]], "age": [["young", "old"]]}))
    lists = load_substitutions(extra)
    assert ("lad", "lass") in lists["gender"] and lists["age"] == [("young", "old")]
    assert {"gender", "names", "nationality", "religion"} <= set(lists)
    extra.write_text(json.dumps({"age": [["young"]]}))
    with pytest.raises(DataError, match="must be a list of \\[term, counterpart\\] pairs"):
        load_substitutions(extra)


def _pronoun_model(examples):
    """A classifier that says 1 exactly when the text mentions 'she'."""
    preds = [int(" she " in f" {ex.text.lower()} ") for ex in examples]
    return preds, [[0.2, 0.8] if p else [0.9, 0.1] for p in preds]


def test_flip_rate_known_values():
    examples = [_cls("she runs", 0), _cls("he runs", 0), _cls("a dog runs", 0), _cls("his car", 0)]
    pairs = load_substitutions()["gender"]
    stats = flip_stats(_pronoun_model, examples, pairs, "classification")
    # 3 inputs change; "she"<->"he" flips both, "his"->"her" does not flip
    assert stats == {"n_changed": 3, "flip_rate": 2 / 3, "mean_prob_change": round((0.7 + 0.7) / 3, 6)}
    nothing = flip_stats(_pronoun_model, examples, [("zebra", "okapi")], "classification")
    assert nothing == {"n_changed": 0, "flip_rate": 0.0}
    gen = flip_stats(lambda exs: ([ex.text for ex in exs], None), examples, pairs, "generation")
    assert gen["change_rate"] == 1.0 and gen["n_changed"] == 3


def test_group_metrics_calls_out_largest_gap():
    examples = [_cls("x", 1, g="a"), _cls("y", 1, g="a"), _cls("z", 0, g="b"), _cls("w", 1, g="b")]
    out = group_metrics(examples, [1, 1, 1, 1], "classification", ["n", "p"], "g")
    assert out["groups"] == {"a": {"score": 1.0, "n": 2}, "b": {"score": 0.5, "n": 2}}
    assert out["largest_gap"] == 0.5 and out["message"] == "largest gap: accuracy 0.5000 between 'a' and 'b'"


# ------------------------------------------------------------------------------------------------ drift


def test_drift_statistics_and_verdict():
    from collections import Counter

    assert js_divergence(Counter("aab"), Counter("aab")) == 0.0
    assert js_divergence(Counter("aa"), Counter("bb")) == pytest.approx(1.0)
    x = np.array([[2.0, 1.0], [0.0, 1.0]])  # centroid (1, 1), mean spread 1
    assert embedding_stats(x, x) == {"embedding_cosine": 0.0, "embedding_shift": 0.0}
    assert embedding_stats(x, x + np.array([2.0, 0.0]))["embedding_shift"] == 2.0
    assert verdict({"length_ks": 0.0, "vocab_js": 0.01}) == ("stable", [])
    assert verdict({"length_ks": 0.3, "vocab_js": 0.01}) == ("drifting", ["length_ks 0.3000 >= 0.2"])
    label, reasons = verdict({"length_ks": 0.3, "metric_drop": 0.1})
    assert label == "retrain" and reasons[0] == "metric_drop 0.1000 >= 0.05"


# ------------------------------------------------------------------------------------ CLI on a tiny run


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("evidence")
    words = {"pos": ["good", "great", "nice", "fine"], "neg": ["bad", "awful", "poor", "sad"]}
    rows = [
        {"text": f"{who} said the film was {w}", "label": label, "group": who}
        for who in ("he", "she", "John", "Mary")
        for label, ws in words.items()
        for w in ws
    ]
    train_f, val_f = root / "train.jsonl", root / "val.jsonl"
    train_f.write_text("".join(json.dumps(r) + "\n" for r in rows[::2]))
    val_f.write_text("".join(json.dumps(r) + "\n" for r in rows[1::2]))
    overrides = [
        f"output_dir={root / 'runs'}",
        f"model.name={tiny_model_dir}",
        f"data.train={train_f}",
        f"data.validation={val_f}",
        "train.max_steps=2",
        "train.batch_size=8",
        "eval.icl_shots=[]",
        "eval.probes=false",
    ]
    summary = train(load_config(None, ["name=a", *overrides]))
    return root, overrides, summary


def test_cli_cv_writes_per_fold_table_and_plot(cls_run, capsys):
    root, overrides, _ = cls_run
    args = ["cv", "/dev/null", "--folds", "2", "--group-column", "group"]
    for item in ["name=cvrun", "train.max_steps=1", *overrides]:
        args += ["--set", item]
    assert cli.main(args) == 0
    out = json.loads((root / "runs" / "cvrun-cv2" / "cv_summary.json").read_text())
    assert out["splitter"] == "StratifiedGroupKFold" and len(out["per_fold"]) == 2
    accs = [row["accuracy"] for row in out["per_fold"]]
    assert out["mean_std"]["accuracy"]["mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert (root / "runs" / "cvrun-cv2" / "cv_plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy:" in capsys.readouterr().out


def test_cli_bias_reports_base_and_tuned(cls_run, capsys):
    root, _, _ = cls_run
    run_dir = root / "runs" / "a"
    assert cli.main(["bias", str(run_dir), "--group-column", "group"]) == 0
    result = json.loads((run_dir / "bias.json").read_text())
    gender = result["categories"]["gender"]
    assert gender["base"]["n_changed"] == gender["tuned"]["n_changed"] == 8  # the he/she rows
    assert result["categories"]["names"]["tuned"]["n_changed"] == 8  # John/Mary rows
    assert result["categories"]["religion"]["tuned"] == {"n_changed": 0, "flip_rate": 0.0}
    assert set(result["groups"]["groups"]) == {"he", "she", "John", "Mary"}
    assert json.loads((run_dir / "summary.json").read_text())["bias"] == result
    assert "<h2>Bias</h2>" in (run_dir / "report.html").read_text()
    assert "largest gap: accuracy" in capsys.readouterr().out


def test_cli_drift_same_data_is_stable_and_new_data_is_not(cls_run, tmp_path, capsys):
    root, _, _ = cls_run
    run_dir = root / "runs" / "a"
    assert cli.main(["drift", str(run_dir), "--data", str(root / "train.jsonl"), "--out", str(tmp_path)]) == 0
    same = json.loads((tmp_path / "drift.json").read_text())
    assert (
        same["verdict"] == "stable" and same["stats"]["vocab_js"] == 0.0 and same["stats"]["length_ks"] == 0.0
    )
    assert same["stats"]["embedding_shift"] == 0.0 and same["stats"]["label_js"] == 0.0
    new = tmp_path / "new.jsonl"
    long = " ".join(["quantum chromodynamics lattice gauge"] * 12)
    new.write_text("".join(json.dumps({"text": f"{long} {i}", "label": "pos"}) + "\n" for i in range(6)))
    code = cli.main(["drift", str(run_dir), "--data", str(new), "--out", str(tmp_path / "n")])
    moved = json.loads((tmp_path / "n" / "drift.json").read_text())
    assert moved["verdict"] == "retrain" and code == 5
    assert moved["stats"]["oov_rate"] > 0.9 and moved["stats"]["length_ks"] == 1.0
    assert (tmp_path / "n" / "drift.png").exists() and "RETRAIN" in capsys.readouterr().out


def test_cli_compare_two_runs(cls_run, tmp_path, capsys):
    root, overrides, _ = cls_run
    train(load_config(None, ["name=b", *overrides, "train.lr=1e-3"]))
    runs = [str(root / "runs" / n) for n in ("a", "b")]
    assert cli.main(["compare", *runs, "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "trainable" in table and table.count("completed") == 2
    data = json.loads((tmp_path / "compare.json").read_text())
    assert [r["run"] for r in data["runs"]] == runs and (tmp_path / "compare.png").exists()
    with pytest.raises(Exception, match=r"no summary\.json"):
        from tunesmith.evaluate.compare import run_row

        run_row(tmp_path)
