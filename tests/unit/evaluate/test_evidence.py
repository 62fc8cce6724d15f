"""Baselines, bootstrap, forgetting probes, gates and overfitting: known inputs and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunesmith import cli
from tunesmith.api import train
from tunesmith.config import GatesConfig, load_config
from tunesmith.data.formats import Example
from tunesmith.evaluate.baselines import baseline_table, draw_shots, few_shot_example
from tunesmith.evaluate.bootstrap import mean_difference_ci, paired_bootstrap
from tunesmith.evaluate.gates import GATE_EXIT_CODE, check_gates
from tunesmith.evaluate.overfitting import overfitting_report
from tunesmith.evaluate.probes import CHECKS, answer_matches, builtin_probes, retention_table


def _cls(text: str, label: int) -> Example:
    return Example("f.jsonl", 1, "classification", text=text, label=label)


# ------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_constant_difference_has_zero_width_interval():
    ci = mean_difference_ci([0, 0, 0, 0], [1, 1, 1, 1], n_resamples=200, seed=0)
    assert ci == {"estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n_resamples": 200}


def test_bootstrap_is_seeded_and_antisymmetric():
    a, b = [0, 1, 0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 1, 1, 0, 1]
    ab, ba = mean_difference_ci(a, b, seed=3), mean_difference_ci(b, a, seed=3)
    assert ab["estimate"] == pytest.approx(0.25)
    assert (ab["ci_low"], ab["ci_high"]) == pytest.approx((-ba["ci_high"], -ba["ci_low"]))
    assert ab == mean_difference_ci(a, b, seed=3)
    assert 0.0 <= ab["ci_low"] < 0.25 < ab["ci_high"] <= 0.625  # b never loses an example to a


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="pair them 1:1"):
        mean_difference_ci([1, 2], [1])
    with pytest.raises(ValueError, match="no examples"):
        paired_bootstrap(lambda idx: 0.0, 0)


# ------------------------------------------------------------------------------------------- baselines


def test_few_shot_prompt_puts_shots_as_prior_turns():
    shots = [_cls("great", 1), _cls("awful", 0)]
    ex = few_shot_example(_cls("fine", 1), shots, ["neg", "pos"], "Text: {text}\nLabel:")
    assert ex.kind == "chat"
    assert ex.messages == [
        {"role": "user", "content": "Text: great\nLabel:"},
        {"role": "assistant", "content": "pos"},
        {"role": "user", "content": "Text: awful\nLabel:"},
        {"role": "assistant", "content": "neg"},
        {"role": "user", "content": "Text: fine\nLabel:"},
        {"role": "assistant", "content": "pos"},
    ]
    chat = Example("c", 1, "chat", messages=[{"role": "system", "content": "S"}, *ex.messages[-2:]])
    shot = Example("c", 2, "chat", messages=[{"role": "system", "content": "S"}, *ex.messages[:2]])
    assert [m["content"] for m in few_shot_example(chat, [shot], None, "").messages] == [
        "S",
        "Text: great\nLabel:",
        "pos",
        "Text: fine\nLabel:",
        "pos",
    ]


def test_draw_shots_is_seeded():
    pool = [_cls(str(i), 0) for i in range(20)]
    assert draw_shots(pool, 3, 7) == draw_shots(pool, 3, 7)
    assert len(draw_shots(pool, 50, 0)) == 20 and draw_shots(pool, 0, 0) == []


def test_zero_shot_prompts_are_the_base_evaluation_prompts(tiny_model, default_tokenizer):
    from tunesmith.data.prepare import Split
    from tunesmith.evaluate.baselines import evaluate_icl
    from tunesmith.evaluate.runner import classify

    cfg = load_config(None, [])
    split = Split([_cls(f"text {i}", i % 2) for i in range(6)], [], [])
    metrics, zero = evaluate_icl(
        tiny_model, default_tokenizer, split, "classification", ["no", "yes"], cfg, []
    )
    assert zero == classify(tiny_model, default_tokenizer, split, ["no", "yes"], cfg)[0]
    assert metrics["n"] == 6
    shots = [_cls("great", 1), _cls("awful", 0)]
    _, two = evaluate_icl(tiny_model, default_tokenizer, split, "classification", ["no", "yes"], cfg, shots)
    assert len(two) == 6 and set(two) <= {0, 1}


def test_fast_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    from tunesmith.evaluate.baselines import macro_f1

    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.integers(0, 4, 15), rng.integers(0, 4, 15)
        expected = f1_score(y, p, labels=[0, 1, 2, 3, 4], average="macro", zero_division=0)
        assert macro_f1(y, p, 5) == pytest.approx(expected)


def test_baseline_table_gain_and_ci_on_known_predictions():
    refs = [0, 1, 0, 1, 0, 1, 0, 1]
    baselines = {
        "0": {"metrics": {"f1_macro": 1 / 3, "accuracy": 0.5}, "predictions": [0] * 8},
        "4": {"metrics": {"f1_macro": 0.5, "accuracy": 0.5}, "predictions": [0, 0, 0, 1, 1, 1, 1, 0]},
    }
    tuned = {"f1_macro": 1.0, "accuracy": 1.0, "labels": ["neg", "pos"], "per_class_f1": {}}
    table = baseline_table(baselines, tuned, refs, refs, "classification", seed=0, n_resamples=300)
    assert table["best_baseline"] == "4-shot" and table["metric"] == "f1_macro"
    assert table["gain"] == 0.5
    assert table["gain_ci95_low"] <= 0.5 <= table["gain_ci95_high"] <= 1.0
    assert table["systems"] == {
        "0-shot": {"f1_macro": 1 / 3, "accuracy": 0.5},
        "4-shot": {"f1_macro": 0.5, "accuracy": 0.5},
        "tuned": {"f1_macro": 1.0, "accuracy": 1.0},
    }


def test_baseline_table_generation_uses_token_f1():
    refs = ["paris", "blue sky"]
    baselines = {"0": {"metrics": {"token_f1": 0.25}, "predictions": ["london", "sky"]}}
    table = baseline_table(baselines, {"token_f1": 1.0}, refs, refs, "generation", seed=0, n_resamples=50)
    assert table["gain"] == 0.75 and table["best_baseline"] == "0-shot"


# ------------------------------------------------------------------------------------------- probes


def test_builtin_probe_suite_is_well_formed():
    suite = builtin_probes()
    assert len(suite["knowledge"]) >= 25 and len(suite["instructions"]) == 10 and len(suite["prose"]) == 5
    assert len({p["id"] for p in suite["knowledge"]}) == len(suite["knowledge"])
    assert {p["check"] for p in suite["instructions"]} <= set(CHECKS)


@pytest.mark.parametrize(
    ("check", "arg", "text", "expected"),
    [
        ("max_words", 1, "Cat.", True),
        ("max_words", 1, "A cat.", False),
        ("uppercase", None, "HELLO, WORLD!", True),
        ("uppercase", None, "Hello", False),
        ("lowercase", None, "banana", True),
        ("list_items", 3, "1. red\n2. green\n3. blue", True),
        ("list_items", 3, "- red\n- green", False),
        ("number_only", None, "2", True),
        ("number_only", None, "2 wheels", False),
        ("yes_no", None, "Yes.", True),
        ("contains", "blue", "The ocean is Blue.", True),
        ("equals", "apple", "Apple.", True),
        ("json_key", "name", 'Here: ```json\n{"name": "Ann"}\n```', True),
        ("json_key", "name", "{name: Ann}", False),
        ("contains_all", ["1", "5"], "1\n2\n5", True),
        ("contains_all", ["1", "5"], "1\n2", False),
        ("starts_with", "Today", " today it rains.", True),
        ("ends_with", "?", '"Is it raining?"', True),
        ("ends_with", "?", "It rains.", False),
    ],
)
def test_instruction_checks(check, arg, text, expected):
    assert CHECKS[check](text, arg) is expected


def test_answer_matches_whole_words_after_normalisation():
    assert answer_matches("The capital of France is Paris.", ["Paris"])
    assert not answer_matches("Parisian food", ["Paris"])
    assert answer_matches("It freezes at 0 degrees.", ["0", "zero"])


def test_retention_table():
    base = {"knowledge": {"score": 0.8}, "ppl": {"score": 10.0, "lower_is_better": True}, "z": {"score": 0}}
    tuned = {"knowledge": {"score": 0.6}, "ppl": {"score": 8.0, "lower_is_better": True}, "z": {"score": 0.5}}
    table = retention_table(base, tuned)
    assert table["knowledge"] == {"base": 0.8, "tuned": 0.6, "retention": 0.75, "forgetting": 0.25}
    assert table["ppl"]["retention"] == 1.25 and table["ppl"]["forgetting"] == 0.0
    assert table["z"]["retention"] is None


def test_gates_name_the_probe_and_the_threshold():
    summary = {
        "forgetting": {"knowledge": {"base": 0.8, "tuned": 0.6, "retention": 0.75, "forgetting": 0.25}},
        "baselines": {"validation": {"metric": "f1_macro", "best_baseline": "4-shot", "gain": 0.01}},
    }
    assert check_gates(GatesConfig(), summary) == []
    reasons = check_gates(GatesConfig(forgetting_max=0.05, min_gain=0.02), summary)
    assert reasons == [
        "forgetting on probe 'knowledge' is 0.2500 > gates.forgetting_max 0.05 (base 0.8, tuned 0.6)",
        "validation f1_macro gain over the best baseline (4-shot) is 0.0100 < gates.min_gain 0.02",
    ]
    assert "no in-context baseline" in check_gates(GatesConfig(min_gain=0.0), {})[0]


# ------------------------------------------------------------------------------------------- overfitting


def test_overfitting_flag_and_gaps():
    rows = []
    for step, (tl, vl) in enumerate([(2.0, 1.5), (1.5, 1.2), (1.0, 1.3), (0.5, 1.4), (0.2, 1.6)], start=1):
        rows += [{"step": step, "train_loss": tl}, {"step": step, "val_loss": vl}]
    report = overfitting_report(rows, patience=3, restored_best=True, best_step=2)
    assert report["overfitting"] is True
    assert report["gap_end"] == pytest.approx(1.4) and report["gap_best"] == pytest.approx(-0.3)
    assert "rose for 3 evaluations (steps 2-5)" in report["message"]
    assert "training finished on the best checkpoint's weights (step 2)" in report["message"]
    assert overfitting_report([], 3, False, None)["gap_end"] is None


def _rows(pairs: list[tuple[float, float]], every: int = 50) -> list[dict]:
    rows = []
    for i, (tl, vl) in enumerate(pairs, start=1):
        rows += [{"step": i * every, "train_loss": tl}, {"step": i * every, "val_loss": vl}]
    return rows


def test_overfitting_flags_a_rise_that_plateaus():
    """The tail of a real run (TweetEval emotion, LoRA head, 3 epochs): validation bottoms at step 350 and
    ends 26 % higher but not rising at every evaluation; training loss falls throughout."""
    vals = [0.838, 0.623, 0.570, 0.522, 0.532, 0.516, 0.504, 0.516, 0.615, 0.649, 0.633, 0.634]
    trains = [1.2, 0.9, 0.7, 0.6, 0.55, 0.5, 0.45, 0.3, 0.2, 0.12, 0.08, 0.05]
    report = overfitting_report(
        _rows(list(zip(trains, vals, strict=True))), 3, restored_best=False, best_step=350
    )
    assert report["overfitting"] is True
    assert report["message"] == (
        "overfitting: validation loss ended 26% above its best (step 350: 0.5040 -> 0.6340 at step 600) "
        "while training loss fell (0.4500 -> 0.0500)"
    )
    # within 10 % of the best, or training loss not falling: noise, not memorisation
    flat = [*vals[:7], 0.52, 0.53, 0.54, 0.53, 0.55]
    assert (
        overfitting_report(_rows(list(zip(trains, flat, strict=True))), 3, False, 350)["overfitting"] is False
    )
    stuck = [*trains[:7]] + [0.46] * 5
    assert (
        overfitting_report(_rows(list(zip(stuck, vals, strict=True))), 3, False, 350)["overfitting"] is False
    )


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cls_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    words = {"pos": ["good", "great", "nice", "fine"], "neg": ["bad", "awful", "poor", "sad"]}
    rows = [
        {"text": f"the film was {w} {i}", "label": label, "group": "a" if i % 2 else "b"}
        for i in range(4)
        for label, ws in words.items()
        for w in ws
    ]
    train, val = root / "train.jsonl", root / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    return train, val


def _overrides(tmp_path, model_dir, files, *extra):
    return [
        "name=cls",
        f"output_dir={tmp_path}",
        f"model.name={model_dir}",
        f"data.train={files[0]}",
        f"data.validation={files[1]}",
        "train.max_steps=2",
        "train.batch_size=8",
        "eval.icl_shots=[0,2]",
        "eval.probe_max_new_tokens=4",
        *extra,
    ]


def test_train_writes_baselines_forgetting_and_overfitting(tmp_path, tiny_model_dir, cls_files):
    summary = train(load_config(None, _overrides(tmp_path, tiny_model_dir, cls_files)))
    assert summary["status"] == "completed" and summary["gates"] == {"passed": True, "failures": []}
    table = summary["baselines"]["validation"]
    assert set(table["systems"]) == {"0-shot", "2-shot", "tuned"}
    assert table["systems"]["tuned"]["f1_macro"] == summary["eval"]["validation"]["tuned"]["f1_macro"]
    # zero-shot is the base evaluation itself (reused, not recomputed)
    assert table["systems"]["0-shot"]["accuracy"] == summary["eval"]["validation"]["base"]["accuracy"]
    assert table["gain_ci95_low"] <= table["gain"] <= table["gain_ci95_high"]
    assert set(summary["forgetting"]) == {"knowledge", "instructions", "prose_perplexity", "safety"}
    assert summary["overfitting"]["gap_end"] is not None
    cache = json.loads((tmp_path / "cls" / "baseline_eval.json").read_text())
    assert set(cache["results"]["validation"]) == {"0", "2"}
    html = (tmp_path / "cls" / "report.html").read_text()
    assert "Baselines" in html and "Forgetting" in html and "Overfitting" in html
    assert "In-context baselines vs tuned" in html and "paired bootstrap 95% CI" in html


def test_failed_gate_marks_run_failed_and_cli_exits_3(tmp_path, tiny_model_dir, cls_files, capsys):
    args = ["train", "/dev/null"]
    for item in _overrides(
        tmp_path,
        tiny_model_dir,
        cls_files,
        "gates.min_gain=5",
        "eval.probes=false",
        "eval.safety_probe=false",
    ):
        args += ["--set", item]
    assert cli.main(args) == GATE_EXIT_CODE == 3
    assert "gate failed: validation f1_macro gain over the best baseline" in capsys.readouterr().err
    summary = json.loads((tmp_path / "cls" / "summary.json").read_text())
    assert summary["status"] == "failed" and not summary["gates"]["passed"]
    assert "forgetting" not in summary


def test_lm_eval_bridge_says_how_to_install_when_missing(monkeypatch, tmp_path):
    import sys

    from tunesmith.errors import TunesmithError
    from tunesmith.evaluate.lm_eval_bridge import run_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(TunesmithError, match=r"needs lm-evaluation-harness: `pip install lm-eval`"):
        run_lm_eval(tmp_path, ["hellaswag"])


def test_lm_eval_bridge_hands_the_run_model_to_simple_evaluate(monkeypatch, tmp_path, tiny_model_dir):
    import sys
    import types

    from tunesmith.config import dump_config, load_config
    from tunesmith.evaluate.lm_eval_bridge import run_lm_eval

    calls: list[dict] = []
    fake = types.SimpleNamespace(simple_evaluate=lambda **kw: calls.append(kw) or {"results": {"t": 1}})
    monkeypatch.setitem(sys.modules, "lm_eval", fake)  # stands in for lm-evaluation-harness
    for kind in ("adapter", "model"):
        run_dir = tmp_path / kind
        (run_dir / kind).mkdir(parents=True)
        cfg = load_config(None, [f"model.name={tiny_model_dir}"])
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        assert run_lm_eval(run_dir, ["hellaswag"], limit=5) == {"results": {"t": 1}}
    adapter_call, model_call = calls
    assert (
        adapter_call["model"] == "hf"
        and adapter_call["tasks"] == ["hellaswag"]
        and adapter_call["limit"] == 5
    )
    assert (
        adapter_call["model_args"] == f"pretrained={tiny_model_dir},peft={tmp_path / 'adapter' / 'adapter'}"
    )
    assert model_call["model_args"] == f"pretrained={tmp_path / 'model' / 'model'}"
