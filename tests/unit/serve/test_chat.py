"""``tunesmith chat``: scripted stdin -> replies, the conversation kept between turns, ``/reset``, Ctrl-D.

The real loop on a tiny run; ``generate_texts`` is wrapped to record the prompt of every turn, so the test
reads exactly what the model was asked. Greedy replies of the same prompt are equal, so after ``/reset`` the
first question gets the first answer again.
"""

from __future__ import annotations

import io

import pytest

from tests.unit.serve.tiny_runs import write_chat_run
from tunesmith.cli import main
from tunesmith.serve import chat


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, default_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    return write_chat_run(tmp_path_factory.mktemp("chat"), default_tokenizer, rows)


def _chat(monkeypatch, capsys, run_dir, stdin):
    prompts: list[str] = []
    real = chat.generate_texts

    def spy(model, tokenizer, ids, **kw):
        prompts.append(tokenizer.decode(ids[0]))
        return real(model, tokenizer, ids, **kw)

    monkeypatch.setattr(chat, "generate_texts", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["chat", str(run_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    return prompts, [line.split("model> ", 1)[1] for line in out.split("you> ") if "model> " in line], out


def test_history_reset_and_ctrl_d(monkeypatch, capsys, run_dir):
    prompts, replies, out = _chat(monkeypatch, capsys, run_dir, "Hi\nAnd the kettle?\n/reset\nHi\n")
    assert len(prompts) == 3 and len(replies) == 3
    first, second, again = prompts
    assert "Hi" in first and "kettle" not in first
    # The second turn sees the first question and the model's own first reply.
    assert second.startswith(first) and replies[0].strip() in second[len(first) :]
    assert second.rstrip().count("And the kettle?") == 1
    assert again == first and replies[2] == replies[0]  # /reset: the same prompt as at the start
    assert "(conversation forgotten)" in out
    assert out.endswith("you> \n")  # Ctrl-D (end of input) ends the loop cleanly


def test_empty_line_quits(monkeypatch, capsys, run_dir):
    prompts, replies, _ = _chat(monkeypatch, capsys, run_dir, "Hi\n\nnever asked\n")
    assert len(prompts) == 1 and len(replies) == 1 and "never asked" not in prompts[0]
