"""``tunesmith data ...``: the CLI over every data step, augmentation, the split rule, run_prepare_steps."""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import pytest

from tunesmith.data.tools.augment import (
    PARAPHRASE_PROMPTS,
    Paraphraser,
    augment_file,
    augment_target,
    random_delete,
    random_swap,
    row_key,
    split_keeping_augmented,
)
from tunesmith.data.tools.cli import add_parser
from tunesmith.data.tools.pipeline import run_prepare_steps
from tunesmith.errors import ConfigError, DataError
from tunesmith.io import read_jsonl

BROKEN_GEN_PROMPT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant:\n{% endif %}"
)


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), "utf-8")
    return path


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tunesmith")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def steps(report_path: Path) -> list[str]:
    return [s["step"] for s in json.loads(report_path.read_text())["steps"]]


QUESTIONS = [
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Name the largest planet in our solar system.",
    "Which gas do plants take in from the air?",
    "How many days are there in a leap year?",
    "What is the boiling point of water at sea level?",
    "Who wrote the play Romeo and Juliet?",
    "What is the capital city of Japan?",
    "How many continents are there on Earth?",
    "What do bees make from nectar?",
]


@pytest.fixture
def questions(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "qa.jsonl", [chat(q, f"Answer {i}.") for i, q in enumerate(QUESTIONS)])


# --- inspect / lint through the CLI ----------------------------------------------------------------------


def test_cli_inspect_writes_json_and_html(tmp_path, capsys):
    path = write_lines(tmp_path / "in.jsonl", [chat("hi", "yo"), "{bad", chat("hi", "yo"), chat("a", " ")])
    outputs = ["--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]
    code = run("inspect", str(path), "--max-length", "16", *outputs)
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["rows"], report["valid"], report["malformed"], report["empty"]) == (4, 2, 1, 1)
    assert report["duplicates"] == 1 and report["tokens"]["over_max_length"] == 2
    assert "[[yo<|im_end|>]]" in out and "\x1b[" not in out  # not a tty: brackets, no colours
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()


def test_cli_lint_exit_codes(tmp_path, capsys):
    good = write_lines(tmp_path / "train.jsonl", [chat("a", "b"), chat("c", "d")])
    assert run("lint", str(good), "--system-prompt", "S", "--json", str(tmp_path / "lint.json")) == 0
    assert json.loads((tmp_path / "lint.json").read_text())["error_count"] == 0
    template = tmp_path / "broken.jinja"
    template.write_text(BROKEN_GEN_PROMPT, encoding="utf-8")
    assert run("lint", str(good), "--chat-template", str(template)) == 1
    assert "error render_failed x2 (lines 1, 2)" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys):
    assert run("inspect", str(tmp_path / "missing.jsonl")) == 2
    assert capsys.readouterr().err.startswith("tunesmith: error: ")
    (tmp_path / "rows.xml").write_text("<rows/>", encoding="utf-8")
    assert run("lint", str(tmp_path / "rows.xml")) == 2
    assert "unsupported file type '.xml'" in capsys.readouterr().err
    val = write_lines(tmp_path / "validation.jsonl", [chat("a", "b")])
    assert run("augment", str(val), "--out", str(tmp_path / "aug.jsonl"), "--ops", "swap") == 2
    assert "looks like a validation or test file" in capsys.readouterr().err
    src = write_lines(tmp_path / "x.jsonl", [chat("a", "b")])
    assert run("clean", str(src), "--out", str(src)) == 2  # never overwrite the input
    assert run("augment", str(src), "--out", str(tmp_path / "y.jsonl"), "--ops", "shuffle") == 2


# --- writing steps and the report ----------------------------------------------------------------------


def test_cli_writing_steps_append_to_one_report(tmp_path, capsys):
    src = write_lines(
        tmp_path / "raw.jsonl",
        [
            chat("Hello <b>there</b>", "Hi!"),
            chat("Hello there", "Hi!"),
            chat("Mail me", "bob@example.com"),
            chat("Empty", "  "),
            chat("Other", "Thing."),
        ],
    )
    work = tmp_path / "work"
    assert run("clean", str(src), "--out", str(work / "clean.jsonl")) == 0
    out = capsys.readouterr().out
    assert "tunesmith data clean: 5 rows in, 4 out" in out and "dropped: empty=1" in out
    assert run("dedup", str(work / "clean.jsonl"), "--out", str(work / "dedup.jsonl"), "--exact-only") == 0
    assert "dropped: exact_duplicate=1" in capsys.readouterr().out
    assert run("pii", str(work / "dedup.jsonl"), "--out", str(work / "pii.jsonl")) == 0
    assert "replacements: EMAIL=1" in capsys.readouterr().out
    report = work / "data_report.json"
    assert steps(report) == ["clean", "dedup", "pii"]
    assert [r["messages"][1]["content"] for r in read_jsonl(work / "pii.jsonl")] == [
        "Hi!",
        "[EMAIL]",
        "Thing.",
    ]
    custom = tmp_path / "elsewhere.json"
    assert run("dedup", str(src), "--out", str(work / "d2.jsonl"), "--report", str(custom)) == 0
    assert steps(custom) == ["dedup"] and steps(report) == ["clean", "dedup", "pii"]


def test_cli_leakage_and_contamination(tmp_path, capsys):
    train = write_lines(tmp_path / "train.jsonl", [chat(q, "a") for q in QUESTIONS[:6]])
    val = write_lines(tmp_path / "val.jsonl", [chat(QUESTIONS[2], "a"), chat("Something new entirely", "b")])
    out = tmp_path / "clean" / "train.jsonl"
    assert run("leakage", str(train), "--eval", str(val), "--out", str(out), "--exact-only") == 0
    assert len(read_jsonl(out)) == 5
    assert steps(out.parent / "data_report.json") == ["leakage"]
    assert f"leaks per eval file: {val}=1" in capsys.readouterr().out
    assert run("contamination", str(val), "--train", str(train), "--n", "4") == 0
    assert "1 of 2 rows" in capsys.readouterr().out
    report = tmp_path / "cont.json"
    gate = ["--fail-above", "0.25", "--report", str(report)]
    assert run("contamination", str(val), "--train", str(train), "--n", "4", *gate) == 1
    assert steps(report) == ["contamination"]


# --- augment ---------------------------------------------------------------------------------------------


def test_word_edits_are_seeded_and_exact():
    text = "the quick brown fox jumps over the lazy dog"
    assert random_swap(text, random.Random("0:1:swap:0")) == "the quick brown fox dog over the lazy jumps"
    assert random_delete(text, random.Random("0:1:delete:0")) == "the quick brown fox jumps the lazy dog"
    swapped = random_swap(text, random.Random(7), rate=0.3)
    assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    # Spacing and line breaks stay where they were; a dropped word takes the space before it along.
    assert random_delete("  first line here\nsecond  line\n", random.Random("a"), 0.3) == "  here\nsecond\n"
    assert random_swap("  first line here\nsecond  line\n", random.Random("a"), 0.3) == (
        "  here line first\nsecond  line\n"
    )
    assert random_delete("one two", random.Random("b"), 0.99) == "one"  # at least one word stays
    assert random_swap("single", random.Random("b")) == "single"


def test_augment_target_fields():
    assert augment_target(chat("q", "a")) == ("messages.0.content", "q")
    assert augment_target({"instruction": "Sum", "input": "1 2", "output": "3"}) == ("instruction", "Sum")
    assert augment_target({"prompt": "p", "completion": "c"}) == ("prompt", "p")
    assert augment_target({"text": "t", "label": 1}) == ("text", "t")
    assert augment_target({"nothing": 1}) is None


def test_augment_word_ops_marks_and_dedups(tmp_path):
    rows = [chat(q, f"Answer {i}.") for i, q in enumerate(QUESTIONS[:3])]
    rows.append(chat("spider legs", "x"))
    rows.append(chat("legs spider", "x"))
    src = write_lines(tmp_path / "train.jsonl", rows)
    report = augment_file(src, tmp_path / "aug.jsonl", ops=("swap", "delete"), seed=0)
    out = read_jsonl(tmp_path / "aug.jsonl")
    assert report["rows_in"] == 5 and report["rows_out"] == len(out) == 12
    assert [r for r in out if "augmented" not in r] == rows  # originals kept, in order
    new = [r for r in out if r.get("augmented") is True]
    assert len(new) == report["augmented_rows"] == 7
    # Each two-word row swaps into the other original (dropped twice), and both delete to "legs" (once kept).
    assert report["augmented"] == {"swap": 3, "delete": 4}
    assert report["dropped"] == {"duplicate": 3}
    assert [(r["augment_op"], r["messages"][0]["content"]) for r in new[:2]] == [
        ("swap", "How many legs does have? spider a"),
        ("delete", "How many legs does a have?"),
    ]
    assert [(r["augment_op"], r["messages"][0]["content"]) for r in new[-1:]] == [("delete", "legs")]
    by_source = {row_key(r): r for r in rows}
    for r in new:
        source = by_source[r["augment_source"]]
        assert r["messages"][1] == source["messages"][1]  # the answer never changes
    # Augmented rows are never augmented again (their source must stay an original row).
    again = augment_file(tmp_path / "aug.jsonl", tmp_path / "aug2.jsonl", ops=("swap",), seed=1)
    assert again["dropped"]["already_augmented"] == 7
    assert all(
        r["augment_source"] in by_source for r in read_jsonl(tmp_path / "aug2.jsonl") if r.get("augmented")
    )
    # Same seed, same output.
    augment_file(src, tmp_path / "again.jsonl", ops=("swap", "delete"), seed=0)
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "aug.jsonl").read_text()


def test_augment_paraphrase_plumbing(tmp_path, default_tokenizer):
    import torch

    from tests.conftest import make_tiny_llama
    from tunesmith.infer.generate import generate_texts

    model = make_tiny_llama(len(default_tokenizer))
    # Untie the head: a tied random head echoes the last prompt token ("\n"), which strips to nothing.
    weight = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
    model.lm_head.weight = torch.nn.Parameter(weight)
    src = write_lines(tmp_path / "train.jsonl", [chat(q, "A.") for q in QUESTIONS[:3]])
    paraphraser = Paraphraser(model=model, tokenizer=default_tokenizer, max_new_tokens=6, batch_size=4)
    report = augment_file(src, tmp_path / "aug.jsonl", n=2, ops=("paraphrase",), paraphraser=paraphraser)

    def request_ids(q: str, k: int) -> list[int]:
        request = PARAPHRASE_PROMPTS[k].format(noun="question", text=q)
        text = default_tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
        )
        return default_tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = [request_ids(q, k) for q in QUESTIONS[:3] for k in (0, 1)]
    expected = [
        t.strip().strip('"“”').strip() for t in generate_texts(model, default_tokenizer, prompts, 6, 6)
    ]
    assert all(expected) and len(set(expected)) == 6  # six distinct, non-empty "paraphrases"
    out = read_jsonl(tmp_path / "aug.jsonl")
    assert [r["messages"][0]["content"] for r in out] == [
        QUESTIONS[0],
        *expected[0:2],
        QUESTIONS[1],
        *expected[2:4],
        QUESTIONS[2],
        *expected[4:6],
    ]
    new = [r for r in out if r.get("augmented")]
    assert {(r["augment_op"], r["messages"][1]["content"]) for r in new} == {("paraphrase", "A.")}
    assert report["augmented"] == {"paraphrase": 6} and report["model"] == "LlamaForCausalLM"


def test_cli_augment_with_tiny_model(tmp_path, tiny_model_dir, capsys):
    src = write_lines(tmp_path / "train.jsonl", [chat(q, "A.") for q in QUESTIONS[:2]])
    out = tmp_path / "aug.jsonl"
    argv = ["augment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--max-new-tokens", "4"]
    assert run(*argv) == 0
    report = json.loads((tmp_path / "data_report.json").read_text())["steps"][0]
    assert report["step"] == "augment" and report["ops"] == ["paraphrase", "swap", "delete"]
    assert report["rows_out"] == len(read_jsonl(out)) == 2 + report["augmented_rows"]
    assert report["augmented"]["swap"] == 2 and report["augmented"]["delete"] == 2
    # The random tiny model's replies may be blank (then dropped); every request is accounted for.
    assert report["augmented"]["paraphrase"] + report["dropped"].get("empty", 0) == 2
    assert "tunesmith data augment: 2 rows in" in capsys.readouterr().out


# --- split keeps augmented rows in train -----------------------------------------------------------------


def test_split_routes_augmented_rows_to_train(questions, tmp_path, capsys):
    aug = tmp_path / "aug.jsonl"
    assert augment_file(questions, aug, ops=("swap", "delete"))["augmented_rows"] == 20
    out = tmp_path / "splits"
    assert run("split", str(aug), "--out", str(out), "--ratios", "0.6,0.2,0.2", "--seed", "3") == 0
    train, val, test = (read_jsonl(out / f"{n}.jsonl") for n in ("train", "validation", "test"))
    assert (len(val), len(test)) == (2, 2)
    assert not any(r.get("augmented") for r in val + test)
    originals = [r for r in train if not r.get("augmented")]
    assert len(originals) == 6 and len(train) == 6 + 12  # 2 new rows per training original
    train_keys = {row_key(r) for r in originals}
    assert all(r["augment_source"] in train_keys for r in train if r.get("augmented"))
    entry = json.loads((out / "data_report.json").read_text())["steps"][0]
    assert entry["input"] == str(aug)
    assert entry["rows"] == {"train": 18, "validation": 2, "test": 2}
    assert entry["augmented"] == {"to_train": 12, "dropped_source_held_out": 8}
    assert "augmented rows: 12 to train, 8 dropped" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())  # the temporary originals file is gone
    assert names == ["data_report.json", "test.jsonl", "train.jsonl", "validation.jsonl"]


def test_split_without_augmented_rows_is_split_file(questions, tmp_path):
    from tunesmith.data.tools.split import split_file

    report = split_keeping_augmented(questions, tmp_path / "a", ratios=(0.8, 0.2), seed=1)
    split_file(questions, tmp_path / "b", ratios=(0.8, 0.2), seed=1)
    for name in ("train", "validation"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (
            tmp_path / "b" / f"{name}.jsonl"
        ).read_text()
    assert report["augmented"] == {"to_train": 0, "dropped_source_held_out": 0}


# --- run_prepare_steps -----------------------------------------------------------------------------------


def test_run_prepare_steps_chains_steps(tmp_path):
    src = write_lines(
        tmp_path / "raw.jsonl",
        [
            chat("Hi <br>there", "Call +1 415 555 2671"),
            chat("Hi\nthere", "Call +1 415 555 2671"),
            chat("q", "  "),
            chat("Other", "Fine."),
        ],
    )
    before = src.read_text()
    plan = [{"step": "clean"}, {"step": "dedup", "near": False}, {"step": "pii"}]
    final, reports = run_prepare_steps(src, plan, tmp_path / "work")
    assert final == tmp_path / "work" / "03-pii.jsonl"
    assert [r["step"] for r in reports] == ["clean", "dedup", "pii"]
    assert [r["rows_out"] for r in reports] == [3, 2, 2]
    assert read_jsonl(final) == [chat("Hi\nthere", "Call [PHONE]"), chat("Other", "Fine.")]
    assert src.read_text() == before
    assert run_prepare_steps(src, [], tmp_path / "none") == (src, [])


def test_run_prepare_steps_rejects_bad_steps(tmp_path):
    src = write_lines(tmp_path / "raw.jsonl", [chat("a", "b")])
    with pytest.raises(ConfigError, match="unknown step 'shuffle'"):
        run_prepare_steps(src, [{"step": "shuffle"}], tmp_path / "w")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['nearr'\]"):
        run_prepare_steps(src, [{"step": "dedup", "nearr": False}], tmp_path / "w")
    with pytest.raises(ConfigError, match="eval_files"):
        run_prepare_steps(src, [{"step": "leakage"}], tmp_path / "w")
    with pytest.raises(DataError, match="does not exist"):
        run_prepare_steps(tmp_path / "missing.jsonl", [{"step": "clean"}], tmp_path / "w")
    val = write_lines(tmp_path / "val.jsonl", [chat("a", "b")])
    _, reports = run_prepare_steps(src, [{"step": "leakage", "eval_files": [str(val)]}], tmp_path / "w")
    assert reports[0]["dropped"] == {"leak_exact": 1}


# --- unreadable rows, cross-file dedup, data.prepare from a run --------------------------------------------


def _broken(path: Path) -> Path:
    """Four good chat rows around a malformed JSON line (line 3)."""
    rows: list[str | dict] = [chat(q, f"Answer {i}.") for i, q in enumerate(QUESTIONS[:4])]
    rows.insert(2, '{"messages": oops}')
    return write_lines(path, rows)


BAD_LINE = "invalid JSON: Expecting value (column 14)"


def test_cli_on_bad_row_stop_or_skip(tmp_path, capsys):
    src = _broken(tmp_path / "raw.jsonl")
    assert run("clean", str(src), "--out", str(tmp_path / "stop.jsonl")) == 2
    assert f"tunesmith: error: {src}:3: {BAD_LINE}" in capsys.readouterr().err
    assert not (tmp_path / "stop.jsonl").exists()
    commands = {
        "clean": ["--out", str(tmp_path / "w" / "clean.jsonl")],
        "dedup": ["--out", str(tmp_path / "w" / "dedup.jsonl")],
        "pii": ["--out", str(tmp_path / "w" / "pii.jsonl")],
        "augment": ["--out", str(tmp_path / "w" / "aug.jsonl"), "--ops", "swap"],
        "split": ["--out", str(tmp_path / "w" / "splits"), "--ratios", "0.5,0.5"],
        "leakage": ["--out", str(tmp_path / "w" / "noleak.jsonl"), "--eval", str(src)],
    }
    report = tmp_path / "report.json"
    for name, argv in commands.items():
        assert run(name, str(src), *argv, "--on-bad-row", "skip", "--report", str(report)) == 0, name
        skipped = 2 if name == "leakage" else 1  # leakage reads src twice: as train and as eval file
        assert f"skipped unreadable rows: {skipped} (first: {src}:3: {BAD_LINE})" in capsys.readouterr().out
    entries = json.loads(report.read_text())["steps"]
    assert [e["step"] for e in entries] == list(commands)
    assert [e["bad_rows"]["skipped"] for e in entries] == [1, 1, 1, 1, 1, 2]
    assert read_jsonl(tmp_path / "w" / "clean.jsonl") == [
        chat(q, f"Answer {i}.") for i, q in enumerate(QUESTIONS[:4])
    ]


def test_cli_dedup_across_files(tmp_path, capsys):
    a = write_lines(tmp_path / "a.jsonl", [chat(q, "x") for q in QUESTIONS[:4]])
    b = write_lines(tmp_path / "b.jsonl", [chat(q, "x") for q in QUESTIONS[2:7]])
    outs = [str(tmp_path / "out" / "a.jsonl"), str(tmp_path / "out" / "b.jsonl")]
    assert run("dedup", str(a), str(b), "--out", *outs, "--exact-only") == 0
    out = capsys.readouterr().out
    assert "tunesmith data dedup: 2 files, 9 rows in, 7 out" in out
    assert f"  {b}: 5 in, 3 out -> {outs[1]}; dropped: cross_file_exact=2" in out
    assert len(read_jsonl(outs[0])) == 4 and read_jsonl(outs[1]) == [chat(q, "x") for q in QUESTIONS[4:7]]
    (entry,) = json.loads((tmp_path / "out" / "data_report.json").read_text())["steps"]
    assert [f["dropped"] for f in entry["files"]] == [{}, {"cross_file_exact": 2}]
    assert run("dedup", str(a), str(b), "--out", outs[0]) == 2
    assert "one output per input file: got 2 inputs, 1 outputs" in capsys.readouterr().err


def test_run_prepare_steps_follow_on_bad_row(tmp_path):
    src = _broken(tmp_path / "raw.jsonl")
    plan = [{"step": "clean"}, {"step": "dedup"}, {"step": "pii"}]
    with pytest.raises(DataError, match=re.escape(f"{src}:3: {BAD_LINE}")):
        run_prepare_steps(src, plan, tmp_path / "stop")
    final, reports = run_prepare_steps(src, plan, tmp_path / "skip", on_bad_row="skip")
    assert [r["bad_rows"]["skipped"] for r in reports] == [1, 0, 0]  # later steps read clean output
    assert reports[0]["bad_rows"]["examples"] == [f"{src}:3: {BAD_LINE}"]
    assert [(r["rows_in"], r["rows_out"]) for r in reports] == [(4, 4), (4, 4), (4, 4)]
    assert len(read_jsonl(final)) == 4
    # A step's own on_bad_row wins over the run's.
    with pytest.raises(DataError, match=":3: "):
        run_prepare_steps(src, [{"step": "pii", "on_bad_row": "stop"}], tmp_path / "own", on_bad_row="skip")


def _fake_paraphrases(monkeypatch) -> list[str]:
    """Paraphraser without a model: "Put simply: <text>", and the model name each one was built with."""
    built: list[str] = []

    def init(self, model_name=None, **kwargs):
        built.append(model_name)
        self.model_name = model_name

    monkeypatch.setattr(Paraphraser, "__init__", init)
    monkeypatch.setattr(Paraphraser, "__call__", lambda self, reqs: [f"Put simply: {t}" for t, _, _ in reqs])
    return built


def test_prepare_augment_paraphrases_with_the_run_model(tmp_path, monkeypatch):
    built = _fake_paraphrases(monkeypatch)
    src = write_lines(tmp_path / "train.jsonl", [chat(q, "A.") for q in QUESTIONS[:3]])
    plan = [{"step": "augment", "ops": ["paraphrase"]}]
    _, (report,) = run_prepare_steps(src, plan, tmp_path / "w1", model="org/base-model")
    assert report["model"] == "org/base-model" and report["augmented"] == {"paraphrase": 3}
    _, (own,) = run_prepare_steps(src, [{**plan[0], "model": "other"}], tmp_path / "w2", model="org/base")
    _, (alone,) = run_prepare_steps(src, plan, tmp_path / "w3")
    assert (own["model"], alone["model"]) == ("other", "default")
    assert built == ["org/base-model", "other", "default"]


def test_train_runs_data_prepare_steps(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.api import train
    from tunesmith.config import load_config

    _fake_paraphrases(monkeypatch)
    rows = [
        chat("What is the <b>return</b> policy?", "Free returns within 30 days."),
        chat("How do I reach support?", "Write to help.desk@example.com any time."),
        chat("Where is the shop?", "   "),
        chat("When are you open?", "From 9 to 5 on weekdays."),
        chat("Do you ship abroad?", "Yes, to 30 countries."),
    ]
    train_file = write_lines(tmp_path / "train.jsonl", rows)
    val = write_lines(tmp_path / "val.jsonl", [chat("Can I pay by card?", "Yes.")])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: prep\noutput_dir: {tmp_path}\nmodel:\n  name: {tiny_model_dir}\nmethod:\n  r: 2\n"
        f"data:\n  train: {train_file}\n  validation: {val}\n  prepare:\n    - {{step: clean}}\n"
        "    - {step: pii}\n    - {step: augment, ops: [paraphrase]}\n"
        "train:\n  max_steps: 1\neval:\n  compare_base: false\n  max_new_tokens: 2\n  max_examples: 1\n"
    )
    train(load_config(cfg))
    run_dir = tmp_path / "prep"
    report = json.loads((run_dir / "data_report.json").read_text())
    clean, pii, aug = report["prepare"]
    assert [s["step"] for s in report["prepare"]] == ["clean", "pii", "augment"]
    assert (clean["rows_in"], clean["rows_out"], clean["dropped"]) == (5, 4, {"empty": 1})
    assert clean["changed"] == {"html_removed": 1}
    assert (pii["rows_in"], pii["rows_out"], pii["details"]["occurrences"]) == (4, 4, {"EMAIL": 1})
    assert (aug["rows_in"], aug["rows_out"], aug["augmented"]) == (4, 8, {"paraphrase": 4})
    assert aug["model"] == str(tiny_model_dir)  # paraphrases by the base model being tuned
    trained = report["files"]["train"]["path"]
    assert trained == str(run_dir / "prepared" / "03-augment.jsonl")
    assert report["splits"]["train"]["kept"] == 8
    text = Path(trained).read_text(encoding="utf-8")
    assert "help.desk@example.com" not in text and text.count("[EMAIL]") == 2  # the row and its paraphrase
    assert "help.desk@example.com" in train_file.read_text()  # the input is never modified
