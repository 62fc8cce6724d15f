"""``method: dpo`` and ``method: reinforcement`` jobs: mapped onto tunesmith's dpo and grpo run kinds,
trained on a tiny base, and their ``ft:`` models served; bad grader specs refused with a ``param``."""

from __future__ import annotations

import openai
import pytest

from tests.unit.jobs.live import upload, wait
from tunesmith.jobs.mapping import RequestError, check_request, to_overrides

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
PAIRS = [  # OpenAI's DPO row shape
    {
        "input": {"messages": [{"role": "user", "content": f"Say a colour after {WORDS[i % 8]}."}]},
        "preferred_output": [{"role": "assistant", "content": WORDS[i % 3]}],
        "non_preferred_output": [{"role": "assistant", "content": f"{WORDS[3 + i % 5]} {WORDS[i % 8]}"}],
    }
    for i in range(12)
]
PROMPTS = [  # OpenAI's reinforcement row shape: messages plus the fields the grader reads
    {"messages": [{"role": "user", "content": f"Name a colour {i}."}], "answer": WORDS[i % 3]}
    for i in range(8)
]
STRING_CHECK = {
    "type": "string_check",
    "name": "colour",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "ilike",
}


def _served(client, name):
    answer = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=3, temperature=0
    )
    return answer.model


def test_dpo_job_trains_and_serves(client, tiny_model_dir):
    uploaded = upload(client, PAIRS, "pairs.jsonl")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        suffix="prefs",
        metadata={"tunesmith_max_steps": "2"},
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "batch_size": 2}}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.5
    assert job.method.dpo.hyperparameters.n_epochs == 1  # auto
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=50) if e.type == "metrics"]
    assert sorted(m["step"] for m in metrics if m["train_loss"] is not None) == [1, 2]
    assert _served(client, done.fine_tuned_model) == done.fine_tuned_model


def test_reinforcement_job_trains_and_serves(client, tiny_model_dir):
    uploaded = upload(client, PROMPTS, "prompts.jsonl")
    method = {
        "type": "reinforcement",
        "reinforcement": {
            "grader": STRING_CHECK,
            "hyperparameters": {"batch_size": 2, "compute_multiplier": 0.5, "eval_samples": 2},
        },
    }
    job = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name,
        training_file=uploaded.id,
        suffix="rft",
        metadata={"tunesmith_max_steps": "2"},
        method=method,
    )
    assert job.method.reinforcement.grader.reference == "{{item.answer}}"
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert _served(client, done.fine_tuned_model) == done.fine_tuned_model


def test_a_dpo_job_on_chat_rows_fails_naming_the_shape(client, tiny_model_dir):
    uploaded = upload(client, PROMPTS, "chat.jsonl")
    job = client.fine_tuning.jobs.create(
        model=tiny_model_dir.name, training_file=uploaded.id, method={"type": "dpo"}
    )
    done = wait(client, job.id)
    assert done.status == "failed" and done.error.param == "training_file"
    assert done.error.message.startswith(f"chat.jsonl ({uploaded.id})"), done.error.message


@pytest.mark.parametrize(
    ("grader", "message"),
    [
        (None, "method.reinforcement.grader is required"),
        ({"type": "string_check", "input": "x"}, "string_check.reference: Field required"),
        ({**STRING_CHECK, "input": "{{sample.text}}"}, "sample.text"),
        ({"type": "python", "source": "def grade(:"}, "source does not compile"),
        ({"type": "multi", "graders": {"a": STRING_CHECK}, "calculate_output": "a + b"}, "b"),
        ({"type": "score_model", "model": "/nowhere", "input": []}, "not a run directory"),
        ({"type": "word_count"}, "method.reinforcement.grader: "),
    ],
)
def test_bad_grader_is_400_on_param_grader(client, tiny_model_dir, grader, message):
    uploaded = upload(client, PROMPTS)
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model=tiny_model_dir.name,
            training_file=uploaded.id,
            method={"type": "reinforcement", "reinforcement": {"grader": grader}},
        )
    assert err.value.param == "grader"
    assert message in err.value.body["message"], err.value.body["message"]


def test_bad_hyperparameter_is_400_naming_it():
    with pytest.raises(RequestError) as err:
        check_request({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}})
    assert (
        err.value.param == "beta"
        and str(err.value) == "method.dpo.hyperparameters.beta must be `auto` or > 0"
    )


def test_dpo_and_reinforcement_overrides():
    dpo = {"model": "default", "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}}
    overrides = to_overrides(dpo, "t.jsonl", None, "ftjob-x", "runs")
    assert "objective.name=dpo" in overrides and "objective.beta=0.2" in overrides
    assert (
        "train.lr=5e-05" in overrides
        and "train.epochs=1.0" in overrides
        and "train.batch_size=4" in overrides
    )
    python = {"type": "python", "source": "def grade(s, i):\n    return 1.0", "image_tag": "2025-05-08"}
    rft = {"model": "default", "method": {"type": "reinforcement", "reinforcement": {"grader": python}}}
    overrides = to_overrides(rft, "t.jsonl", None, "ftjob-y", "runs")
    assert "objective.name=grpo" in overrides and "objective.num_generations=4" in overrides
    grader = '{"type": "python", "source": "def grade(s, i):\\n    return 1.0"}'  # image_tag dropped
    assert f"objective.grader={grader}" in overrides and "train.lr=0.0001" in overrides
