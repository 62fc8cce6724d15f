"""``predict`` on a generation run answers questions in every shape a user would try (issue #16): chat rows
ending with the user's turn, ``prompt`` rows, ``instruction`` (+``input``) rows without ``output``, a ``.txt``
with one question per line, and training rows; ``.txt`` outputs hold one answer per line."""

from __future__ import annotations

import json

import pytest

import tunesmith.evaluate.runner as runner_module
from tunesmith import cli
from tunesmith.api import predict, train
from tunesmith.config import load_config
from tunesmith.data.prepare import prepare_data
from tunesmith.data.prompts import read_prompts
from tunesmith.data.render import IGNORE_INDEX, render_prompt
from tunesmith.errors import ConfigError, DataError
from tunesmith.pipelines.base import one_line
from tunesmith.runs import load_trained

QUESTIONS = ["What colour is the Aster mug?", "How much is the Birch lamp?", "Who makes the Cedar chair?"]
ANSWERS = ["Teal.", "42 euros.", "Nordwood."]
SYSTEM, PREFIX = "You answer questions about the store.", "[store] "


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _user(text):
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("gen")
    rows = [
        {"messages": [_user(q), {"role": "assistant", "content": a}]}
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]
    data = _jsonl(tmp / "train.jsonl", rows * 2)
    cfg = load_config(
        None,
        [
            f"output_dir={tmp}",
            "name=gen",
            f"model.name={tiny_model_dir}",
            f"data.train={data}",
            "data.validation_fraction=0",
            f"data.system_prompt={SYSTEM}",
            f"data.prefix={PREFIX!r}",
            "method.name=full",  # 20 steps at a high rate: the random model's answers stop being blank
            "train.lr=1e-2",
            "train.max_steps=20",
            "train.batch_size=6",
            "train.precision=fp32",
            "eval.compare_base=false",
            "eval.probes=false",
            "eval.icl_shots=[]",
            "eval.max_new_tokens=4",
        ],
    )
    train(cfg)
    return tmp / "gen", cfg


@pytest.fixture
def echo(monkeypatch, default_tokenizer):
    """Generation replaced by an echo of the prompt's last user turn (rendering stays real), so answers show
    which input they belong to; the prompts are recorded."""
    seen: list[list[int]] = []

    def fake(model, tokenizer, prompts, max_new_tokens=64, batch_size=16, desc="generate"):
        seen.extend(prompts)
        texts = [tokenizer.decode(p) for p in prompts]
        return [t.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0] for t in texts]

    monkeypatch.setattr(runner_module, "generate_texts", fake)
    return seen


def _shapes(tmp_path, questions):
    """The same questions in the four prompt shapes plus the training shape, one file each."""
    return {
        "chat": _jsonl(tmp_path / "chat.jsonl", [{"messages": [_user(q)]} for q in questions]),
        "prompt": _jsonl(tmp_path / "prompt.jsonl", [{"prompt": q} for q in questions]),
        "instruction": _jsonl(tmp_path / "instruction.jsonl", [{"instruction": q} for q in questions]),
        "txt": _write(tmp_path / "questions.txt", "".join(q + "\n" for q in questions)),
        "training": _jsonl(
            tmp_path / "training.jsonl",
            [{"messages": [_user(q), {"role": "assistant", "content": "ignored"}]} for q in questions],
        ),
    }


def _write(path, text):
    path.write_text(text)
    return path


def test_the_four_question_shapes_are_answered_on_a_tiny_model(gen_run, tmp_path, capsys):
    run_dir, _ = gen_run
    answers = {}
    for shape, path in _shapes(tmp_path, QUESTIONS).items():
        out = tmp_path / f"{shape}.answers.txt"
        assert cli.main(["predict", str(run_dir), "--data", str(path), "--out", str(out)]) == 0, shape
        answers[shape] = out.read_text().splitlines()
        assert len(answers[shape]) == len(QUESTIONS), shape
    # Same question, same prompt, same greedy answer in every shape (a training row's answer is not read).
    assert all(a == answers["chat"] for a in answers.values()), answers
    assert any(answers["chat"]), answers  # not a vacuous match of empty answers
    out = predict(run_dir, tmp_path / "prompt.jsonl", tmp_path / "a.jsonl")
    assert [one_line(json.loads(x)["prediction"]) for x in out.read_text().splitlines()] == answers["chat"]


def test_instruction_with_input_and_chat_history_are_prompts(gen_run, tmp_path, echo, default_tokenizer):
    run_dir, _ = gen_run
    data = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "Translate.", "input": "Hallo"},
            {"instruction": "Say hi.", "input": ""},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    _user("Hi"),
                    {"role": "assistant", "content": "Hello!"},
                    _user("Price of the Birch lamp?"),
                ]
            },
            {"prompt": "Q?", "completion": "A."},
        ],
    )
    out = predict(run_dir, data, tmp_path / "a.txt")
    assert out.read_text().splitlines() == [
        f"{PREFIX}Translate.\\n\\nHallo",  # the instruction's input joined as in training, newlines escaped
        f"{PREFIX}Say hi.",
        "Price of the Birch lamp?",  # the prefix goes before the first user turn only, as in training
        f"{PREFIX}Q?",
    ]
    history = default_tokenizer.decode(echo[2])
    assert history.startswith("<|im_start|>system\nBe brief.<|im_end|>")  # its own system turn is kept
    assert SYSTEM not in history


def test_txt_lines_keep_their_order_and_blank_lines_get_empty_answers(gen_run, tmp_path, echo):
    run_dir, _ = gen_run
    lines = [QUESTIONS[2], "", QUESTIONS[0], "   ", QUESTIONS[1]]
    data = _write(tmp_path / "q.txt", "\n".join(lines) + "\n")
    out = tmp_path / "answers.txt"
    assert cli.main(["predict", str(run_dir), "--data", str(data), "--out", str(out)]) == 0
    expected = [PREFIX + q if q.strip() else "" for q in lines]
    assert out.read_text().splitlines() == expected
    assert len(echo) == 3  # blank lines are not sent to the model
    backwards = _write(tmp_path / "r.txt", "\n".join(lines[::-1]))  # no final newline: still 5 lines
    reversed_out = predict(run_dir, backwards, tmp_path / "r.out", fmt="text")
    assert reversed_out.read_text().splitlines() == expected[::-1]
    jsonl = predict(run_dir, data, tmp_path / "answers.jsonl")
    assert [json.loads(x)["prediction"] for x in jsonl.read_text().splitlines()] == expected


def test_user_ending_prompt_equals_the_training_render_minus_the_answer(gen_run, tmp_path, echo):
    run_dir, cfg = gen_run
    _, tokenizer, _ = load_trained(run_dir)
    training = prepare_data(cfg.data, tokenizer, cfg.seed).train  # the ids the run trained on
    data = _jsonl(tmp_path / "ask.jsonl", [{"messages": [_user(q)]} for q in QUESTIONS])
    predict(run_dir, data, tmp_path / "a.jsonl")
    assert len(echo) == len(QUESTIONS)
    for prompt, q in zip(echo, QUESTIONS, strict=True):
        i = next(k for k, ex in enumerate(training.examples) if ex.messages[0]["content"] == PREFIX + q)
        ids, labels = training.input_ids[i], training.labels[i]
        first_target = next(k for k, label in enumerate(labels) if label != IGNORE_INDEX)
        assert prompt == ids[:first_target]  # same template, system prompt, prefix; then the answer starts
        text = tokenizer.decode(prompt)
        assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
        assert text.endswith(f"user\n{PREFIX}{q}<|im_end|>\n<|im_start|>assistant\n")


def test_render_prompt_of_a_user_ending_chat_matches_the_answered_one(default_tokenizer, tmp_path):
    turns = [_user("Hi"), {"role": "assistant", "content": "Yo"}, _user("2+2?")]
    asked = _jsonl(tmp_path / "a.jsonl", [{"messages": turns}])
    answered = _jsonl(tmp_path / "b.jsonl", [{"messages": [*turns, {"role": "assistant", "content": "4"}]}])
    [a], [b] = read_prompts(asked), read_prompts(answered)
    for system in (None, "Be nice."):
        assert render_prompt(a, default_tokenizer, system, "") == render_prompt(
            b, default_tokenizer, system, ""
        )


def test_bad_rows_stop_with_file_and_line(gen_run, tmp_path):
    run_dir, _ = gen_run
    bad = _write(
        tmp_path / "bad.jsonl", json.dumps({"prompt": "ok"}) + "\n\n" + json.dumps({"question": "?"}) + "\n"
    )
    with pytest.raises(DataError) as info:
        predict(run_dir, bad, tmp_path / "out.txt")
    message = str(info.value)
    assert message.startswith(f"{bad}:3: cannot tell the data format from the keys ['question']")
    assert "prompt (+completion)" in message and "instruction (+input, +output)" in message
    assert not (tmp_path / "out.txt").exists()
    wrong = _jsonl(
        tmp_path / "w.jsonl", [{"prompt": "ok"}, {"messages": [{"role": "system", "content": "x"}]}]
    )
    with pytest.raises(DataError, match=r"w\.jsonl:2: the conversation holds only a system turn"):
        read_prompts(wrong)
    typed = _jsonl(tmp_path / "t.jsonl", [{"instruction": 3}])
    with pytest.raises(DataError, match=r"t\.jsonl:1: key 'instruction' must be a string, got integer"):
        read_prompts(typed)
    with pytest.raises(ConfigError, match="--format labels needs a classification run"):
        predict(run_dir, _shapes(tmp_path, QUESTIONS)["txt"], tmp_path / "l.txt", fmt="labels")


def test_one_line_escapes_are_reversible():
    text = "a\nb\\n c\r\n\u2028d\x0b"
    line = one_line(text)
    assert line.splitlines() == [line]
    assert line == "a\\nb\\\\n c\\r\\n\\u2028d\\x0b"
    assert line.encode().decode("unicode_escape") == text  # Python's own string-literal escapes


def test_write_predictions_formats(tmp_path):
    from tunesmith.api import write_predictions

    labelled = [{"label": 1, "label_name": "joy", "probs": [0.2, 0.8]}, {"label": 0, "label_name": "anger"}]
    assert write_predictions(tmp_path / "l.txt", labelled, "auto").read_text() == "1\n0\n"  # as before
    assert write_predictions(tmp_path / "n.txt", labelled, "text").read_text() == "joy\nanger\n"
    answers = [{"prediction": "two\nlines"}, {"prediction": ""}]
    assert write_predictions(tmp_path / "a.txt", answers, "auto").read_text() == "two\\nlines\n\n"
    assert write_predictions(tmp_path / "a.jsonl", answers, "auto").read_text().splitlines() == [
        json.dumps(r) for r in answers
    ]
    with pytest.raises(ConfigError, match="--format labels needs a classification run"):
        write_predictions(tmp_path / "x.txt", answers, "labels")
    with pytest.raises(ConfigError, match="unknown prediction format 'csv'"):
        write_predictions(tmp_path / "x.csv", answers, "csv")


def test_read_prompts_csv_and_shapes(tmp_path):
    csv = _write(tmp_path / "q.csv", 'instruction,input\nAdd.,"1, 2"\nSay hi.,\n')
    a, b = read_prompts(csv)
    assert (a.source, a.line, a.messages) == (str(csv), 2, [_user("Add.\n\n1, 2")])
    assert b.line == 3 and b.messages == [_user("Say hi.")]
    chat = json.dumps([_user("Hi"), {"role": "assistant", "content": "Yo"}, _user("Bye?")])
    quoted = '"' + chat.replace('"', '""') + '"'  # CSV cells hold the conversation as JSON text
    [c] = read_prompts(_write(tmp_path / "c.csv", f"messages\n{quoted}\n"))
    assert [m["role"] for m in c.messages] == ["user", "assistant", "user"]
    blank = read_prompts(
        _jsonl(tmp_path / "b.jsonl", [{"prompt": " "}, {"messages": [_user("")]}, {"text": "x"}])
    )
    assert blank[:2] == [None, None] and blank[2].messages == [_user("x")]


def test_predict_with_an_index_asks_the_raft_prompt_and_returns_chunk_ids(gen_run, tmp_path, echo):
    from tunesmith.rag.chunk import Chunk
    from tunesmith.rag.index import RetrievalIndex
    from tunesmith.rag.prompt import render_rag_prompt

    run_dir, _ = gen_run
    chunks = [
        Chunk("birch#0", "birch", "The Birch lamp costs 42 euros."),
        Chunk("aster#0", "aster", "Aster: teal."),
    ]
    RetrievalIndex(chunks).save(tmp_path / "idx")
    data = _jsonl(tmp_path / "q.jsonl", [{"prompt": "How much is the Birch lamp?"}])
    out = predict(run_dir, data, tmp_path / "a.jsonl", index=tmp_path / "idx", k=2)
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["retrieved"] == ["birch#0"]  # "aster" shares no term with the question
    # what the model was asked: the training shape of `data raft`, then the run's prefix, as in training
    assert row["prediction"] == PREFIX + render_rag_prompt("How much is the Birch lamp?", chunks[:1])


def _with_rag(run_dir, tmp_path, index, k):
    """A copy of ``run_dir`` whose config.yaml records ``rag.index`` and ``rag.k``, as a RAFT run's does."""
    import shutil

    import yaml

    copy = tmp_path / "rag-run"
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    assert cfg["rag"] == {"index": None, "k": 4}  # every run records the section, defaults written out
    cfg["rag"] = {"index": str(index), "k": k}
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    return copy


def _two_indexes(tmp_path):
    """`idx`: two store chunks (returned); `other`: one chunk of another document."""
    from tunesmith.rag.chunk import Chunk
    from tunesmith.rag.index import RetrievalIndex

    lamps = [Chunk("birch#0", "birch", "The Birch lamp costs 42 euros."), Chunk("aster#0", "aster", "Teal.")]
    other = [Chunk("lamp-faq#0", "lamp-faq", "Every Birch lamp ships in a box.")]
    RetrievalIndex(lamps).save(tmp_path / "idx")
    RetrievalIndex(other).save(tmp_path / "other")
    return lamps


def test_predict_retrieves_from_the_index_the_run_records_unless_told_otherwise(gen_run, tmp_path, echo):
    from tunesmith.rag.prompt import render_rag_prompt

    lamps = _two_indexes(tmp_path)
    run_dir = _with_rag(gen_run[0], tmp_path, tmp_path / "idx", 1)
    question = "How much is the Birch lamp?"
    data = _jsonl(tmp_path / "q.jsonl", [{"prompt": question}])

    def ask(*args, **kwargs):
        out = predict(run_dir, data, tmp_path / "a.jsonl", *args, **kwargs)
        return [json.loads(x) for x in out.read_text().splitlines()]

    # no --index: the run's rag.index with its rag.k (1)
    assert ask() == [
        {"prediction": PREFIX + render_rag_prompt(question, lamps[:1]), "retrieved": ["birch#0"]}
    ]
    # an explicit index wins over the recorded one; an explicit k over rag.k
    assert ask(index=tmp_path / "other", k=3)[0]["retrieved"] == ["lamp-faq#0"]
    assert ask(k=2)[0]["retrieved"] == ["birch#0"]  # "aster" shares no term with the question
    # --no-index: closed-book, no `retrieved`
    assert ask(use_run_index=False) == [{"prediction": PREFIX + question}]


def test_prompts_that_already_hold_chunks_are_not_retrieved_into_again(gen_run, tmp_path, echo):
    from tunesmith.rag.prompt import render_rag_prompt

    lamps = _two_indexes(tmp_path)
    run_dir = _with_rag(gen_run[0], tmp_path, tmp_path / "idx", 1)
    given = render_rag_prompt("Aster colour?", lamps[::-1])  # what `rag contexts` writes: aster#0, birch#0
    data = _jsonl(tmp_path / "q.jsonl", [{"messages": [_user(given)]}, {"prompt": "Birch lamp?"}])
    expected = [
        {"prediction": PREFIX + given, "retrieved": ["aster#0", "birch#0"]},
        {"prediction": PREFIX + render_rag_prompt("Birch lamp?", lamps[:1]), "retrieved": ["birch#0"]},
    ]
    out = predict(run_dir, data, tmp_path / "a.jsonl")
    assert [json.loads(x) for x in out.read_text().splitlines()] == expected
    # without any index too: the chunk ids come from the prompt, so `rag compare` can score recall@k
    out = predict(run_dir, data, tmp_path / "b.jsonl", use_run_index=False)
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        expected[0],
        {"prediction": PREFIX + "Birch lamp?", "retrieved": []},
    ]


def test_chat_and_the_predict_command_use_the_recorded_index(gen_run, tmp_path, echo, monkeypatch, capsys):
    import tunesmith.serve.chat as chat_module
    from tunesmith.rag.prompt import render_rag_prompt

    lamps = _two_indexes(tmp_path)
    run_dir = _with_rag(gen_run[0], tmp_path, tmp_path / "idx", 1)
    data = _jsonl(tmp_path / "q.jsonl", [{"prompt": "Birch lamp?"}])
    for flags, retrieved in (
        ([], ["birch#0"]),
        (["--no-index"], None),
        (["--index", str(tmp_path / "other")], ["lamp-faq#0"]),
    ):
        argv = ["predict", str(run_dir), "--data", str(data), "--out", str(tmp_path / "c.jsonl"), *flags]
        args = cli.build_parser().parse_args(argv)
        assert args.func(args) == 0
        (row,) = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
        assert row.get("retrieved") == retrieved
    lines = iter(["Birch lamp?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt: next(lines))
    asked = []
    monkeypatch.setattr(chat_module, "generate_texts", lambda m, t, ids, **kw: asked.extend(ids) or ["42"])
    chat_module.chat_loop(run_dir)
    assert "[retrieved: birch#0]" in capsys.readouterr().out
    tokenizer = load_trained(run_dir)[1]
    assert render_rag_prompt("Birch lamp?", lamps[:1]) in tokenizer.decode(asked[0])
