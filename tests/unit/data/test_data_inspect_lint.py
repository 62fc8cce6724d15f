"""tunesmith data inspect / lint: planted files, exact counts, the real tokenizer and broken templates."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.data.formats import Example
from tunesmith.data.render import CHATML_TEMPLATE, render_example
from tunesmith.data.tools.inspect import format_inspect, inspect_file, inspect_html
from tunesmith.data.tools.lint import default_system_prompt, end_of_turn_token, format_lint, lint_file
from tunesmith.data.tools.token_stats import length_histogram, marked_example

GSM8K = (
    Path(__file__).resolve().parents[4]
    / "shared"
    / "datasets"
    / "openai-format"
    / "gsm8k-chat"
    / "train.jsonl"
)
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# The generation prompt says "assistant:" but training turns say "assistant": inference sees a prompt the
# model was never trained on.
BROKEN_GEN_PROMPT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant:\n{% endif %}"
)
# Leaves <|im_end|> off the final assistant reply only: the model never learns to stop after its answer.
NO_FINAL_EOT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not (loop.last and m['role'] == 'assistant') %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


LONG = " ".join(f"word{i}" for i in range(80))  # about 160 tokens: over max_length 64


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """12 rows: malformed at lines 3 and 6, over-long at 4, 7, 10, empty at 9, line 8 repeats line 2."""
    return write_lines(
        tmp_path / "planted.jsonl",
        [
            chat("What is 2+2?", "4"),  # 1
            chat("Capital of France?", "Paris."),  # 2
            '{"messages": [broken json',  # 3  malformed: invalid JSON
            chat("Count for me.", LONG),  # 4  over-long
            chat("Hi", "Hello!"),  # 5
            {"prompt": "wrong format", "completion": "x"},  # 6  malformed: not chat in a chat file
            chat("Long question " + LONG, "ok"),  # 7  over-long (the answer is cut off entirely)
            chat("  capital of FRANCE? ", "paris."),  # 8  exact duplicate of 2 after normalisation
            chat("Anything?", "   "),  # 9  empty answer
            chat("More", LONG + " more"),  # 10 over-long
            chat("Bye", "Goodbye."),  # 11
            chat("Thanks", "You're welcome."),  # 12
        ],
    )


@pytest.fixture
def fresh_tokenizer():
    """A tokenizer of our own, so tests may change its chat template without touching the shared one."""
    from tunesmith.models.loading import load_tokenizer

    return load_tokenizer("default")


# --- inspect ---------------------------------------------------------------------------------------------


def test_inspect_counts_planted_problems_exactly(planted, default_tokenizer):
    report = inspect_file(planted, default_tokenizer, max_length=64)
    assert report["format"] == "chat"
    assert (report["rows"], report["valid"], report["empty"], report["malformed"]) == (12, 9, 1, 2)
    assert [r["line"] for r in report["malformed_rows"]] == [3, 6]
    assert report["malformed_rows"][0]["error"].startswith(f"{planted}:3: invalid JSON")
    assert "missing key 'messages'" in report["malformed_rows"][1]["error"]
    assert report["empty_lines"] == [9]
    assert report["duplicates"] == 1
    assert report["duplicate_pairs"] == [{"line": 8, "duplicate_of": 2}]
    tokens = report["tokens"]
    assert tokens["examples"] == 9
    assert tokens["over_max_length"] == 3
    assert tokens["over_max_length_lines"] == [4, 7, 10]
    assert tokens["no_target_after_cut"] == 1  # line 7: the question alone fills the budget
    assert sum(tokens["histogram"]["counts"]) == 9
    assert report["labels"] is None
    # Lengths are the real training render's: the longest row is line 4.
    ex = Example("x", 4, "chat", messages=chat("Count for me.", LONG)["messages"])
    assert tokens["max"] == len(render_example(ex, default_tokenizer, None, None, "{text}")[0])


def test_inspect_does_not_stop_and_caps_listing(tmp_path, default_tokenizer):
    lines = ["not json"] * 30 + [chat("q", "a")]
    report = inspect_file(write_lines(tmp_path / "bad.jsonl", lines), default_tokenizer, max_listed=5)
    assert report["malformed"] == 30
    assert [r["line"] for r in report["malformed_rows"]] == [1, 2, 3, 4, 5]
    assert report["valid"] == 1
    assert report["format"] == "chat"


def test_inspect_label_distribution(tmp_path, default_tokenizer):
    labels = ["joy", "anger", "joy", "sadness", "joy", "anger"]
    rows = [{"text": f"text {i}", "label": lab} for i, lab in enumerate(labels)]
    report = inspect_file(write_lines(tmp_path / "cls.jsonl", rows), default_tokenizer)
    assert report["format"] == "classification"
    assert report["labels"] == {"joy": 3, "anger": 2, "sadness": 1}
    assert report["label_names"] == ["anger", "joy", "sadness"]
    text = format_inspect(report)
    assert "labels: joy=3 (50.0%), anger=2 (33.3%), sadness=1 (16.7%)" in text


def test_inspect_example_shows_the_loss_mask(tmp_path, default_tokenizer):
    report = inspect_file(write_lines(tmp_path / "one.jsonl", [chat("hi", "yo")]), default_tokenizer)
    example = report["example"]
    assert example["line"] == 1
    assert example["trained_tokens"] == 2  # "yo" and <|im_end|>
    assert marked_example(example) == (
        f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n[[yo<|im_end|>]]\n"
    )
    colored = marked_example(example, color=True)
    assert "\x1b[1;32myo<|im_end|>\x1b[0m" in colored and "[[" not in colored
    assert "[[yo<|im_end|>]]" in format_inspect(report)


def test_length_histogram_bins():
    hist = length_histogram(Counter({10: 2, 35: 1, 70: 1}), max_length=64, bins=16)
    assert hist["bin_width"] == 5  # 70 / 16 = 4.4, rounded up to 5
    assert len(hist["counts"]) == 15
    assert hist["counts"][2] == 2 and hist["counts"][7] == 1 and hist["counts"][14] == 1
    assert sum(hist["counts"]) == 4
    assert hist["edges"][:3] == [0, 5, 10] and hist["edges"][-1] == 75


def test_inspect_percentiles_and_text(planted, default_tokenizer):
    report = inspect_file(planted, default_tokenizer, max_length=64)
    tokens = report["tokens"]
    assert tokens["min"] <= tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"]
    assert tokens["p99"] == tokens["max"]  # 9 examples: the 99th percentile is the largest
    text = format_inspect(report)
    assert "rows: 12 (valid 9, empty 1, malformed 2)" in text
    assert "over max_length 64: 3 would be truncated (lines 4, 7, 10); 1 would lose" in text
    assert "exact duplicates: 1 (line 8 repeats 2)" in text
    assert "<- max_length 64" in text


def test_inspect_html_is_self_contained(planted, default_tokenizer):
    page = inspect_html(inspect_file(planted, default_tokenizer, max_length=64))
    match = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert match is not None
    assert base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<mark>" in page and "planted.jsonl:3: invalid JSON" in page


def test_inspect_broken_json_array_stops_with_reason(tmp_path, default_tokenizer):
    path = tmp_path / "rows.json"
    path.write_text('[{"text": "a"}, {"text": "b"} {"text": "c"}]', encoding="utf-8")
    report = inspect_file(path, default_tokenizer)
    assert report["valid"] == 2
    assert "expected ',' or ']'" in report["stopped"]


@pytest.mark.skipif(not GSM8K.is_file(), reason="shared gsm8k-chat dataset not present")
def test_inspect_gsm8k_chat(default_tokenizer):
    report = inspect_file(GSM8K, default_tokenizer, max_length=256)
    assert (report["format"], report["rows"], report["valid"], report["malformed"]) == ("chat", 449, 449, 0)
    assert report["duplicates"] == 0
    tokens = report["tokens"]
    assert tokens["examples"] == 449
    assert (tokens["min"], tokens["max"], tokens["over_max_length"]) == (106, 568, 118)
    assert report["example"]["segments"][-2] == {
        "trained": True,
        "text": " Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
        "altogether in April and May.\n#### 72!!!<|im_end|>",
    }


# --- lint: template facts ------------------------------------------------------------------------------


def test_default_system_prompt_and_end_of_turn(default_tokenizer, fresh_tokenizer):
    assert default_system_prompt(default_tokenizer) == SMOL_SYSTEM
    assert end_of_turn_token(default_tokenizer) == default_tokenizer.convert_tokens_to_ids("<|im_end|>")
    fresh_tokenizer.chat_template = CHATML_TEMPLATE
    assert default_system_prompt(fresh_tokenizer) is None
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    assert end_of_turn_token(fresh_tokenizer) is None


# --- lint: rows ----------------------------------------------------------------------------------------


def test_lint_clean_file_warns_about_system_prompts(tmp_path, default_tokenizer):
    rows = [
        chat("a", "b"),
        chat("c", "d"),
        chat("e", "f", system="Be brief."),
        chat("g", "h", system="Other."),
    ]
    path = write_lines(tmp_path / "train.jsonl", rows)
    report = lint_file(path, default_tokenizer)
    assert report["ok"] and report["error_count"] == 0 and report["checked"] == 4
    assert report["warnings"]["default_system_prompt"]["lines"] == [1, 2]
    assert report["warnings"]["system_prompt_mismatch"]["lines"] == [3, 4]
    assert report["template"] == {
        "default_system_prompt": SMOL_SYSTEM,
        "inference_system_prompt": SMOL_SYSTEM,
        "end_of_turn": "<|im_end|>",
    }
    assert report["row_system_prompts"] == {"Be brief.": 1, "Other.": 1}

    configured = lint_file(path, default_tokenizer, system_prompt="Be brief.")
    assert set(configured["warnings"]) == {"system_prompt_mismatch"}  # rows 1-2 get the configured prompt
    assert configured["warnings"]["system_prompt_mismatch"]["lines"] == [4]
    assert "'Other.'" in configured["warnings"]["system_prompt_mismatch"]["message"]


def test_lint_reports_broken_generation_prompt(tmp_path, fresh_tokenizer):
    fresh_tokenizer.chat_template = BROKEN_GEN_PROMPT
    path = write_lines(tmp_path / "train.jsonl", [chat("a", "b"), chat("c", "d"), chat("e", "f")])
    report = lint_file(path, fresh_tokenizer)
    assert not report["ok"]
    assert report["errors"]["render_failed"]["count"] == 3
    assert report["errors"]["render_failed"]["lines"] == [1, 2, 3]
    assert "not prefix-stable" in report["errors"]["render_failed"]["message"]
    assert "error render_failed x3 (lines 1, 2, 3)" in format_lint(report)


def test_lint_reports_reply_without_end_of_turn_in_the_loss(tmp_path, fresh_tokenizer):
    fresh_tokenizer.chat_template = NO_FINAL_EOT
    path = write_lines(tmp_path / "train.jsonl", [chat("a", "b"), chat("c", "d")])
    report = lint_file(path, fresh_tokenizer)
    assert report["errors"]["eot_not_in_loss"]["lines"] == [1, 2]
    assert report["error_count"] == 2


def test_lint_reports_token_boundary_mismatch(tmp_path, default_tokenizer):
    # The reply starts with "\n\n": training merges it with the generation prompt's "\n" into one token.
    path = write_lines(tmp_path / "train.jsonl", [chat("a", "b"), chat("q", "\n\nHello")])
    report = lint_file(path, default_tokenizer, system_prompt="S")
    assert set(report["errors"]) == {"prompt_token_mismatch"}
    assert report["errors"]["prompt_token_mismatch"]["lines"] == [2]
    assert report["warnings"] == {}


def test_lint_counts_malformed_rows_as_errors(tmp_path, default_tokenizer):
    path = write_lines(tmp_path / "train.jsonl", [chat("a", "b"), "{oops", chat("c", "   ")])
    report = lint_file(path, default_tokenizer, system_prompt="S")
    assert report["errors"]["malformed_row"]["lines"] == [2]
    assert report["warnings"]["empty_row"]["lines"] == [3]
    assert report["error_count"] == 1 and not report["ok"]


def test_lint_text_rows_have_nothing_to_check(tmp_path, default_tokenizer):
    report = lint_file(write_lines(tmp_path / "t.jsonl", [{"text": "plain"}]), default_tokenizer)
    assert report["ok"] and report["checked"] == 0 and "nothing to check" in report["note"]
