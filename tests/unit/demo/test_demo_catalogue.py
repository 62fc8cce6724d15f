"""The demo's data generator: determinism, counts, held-out phrasings, learnability, scoring."""

from __future__ import annotations

from collections import Counter

import pytest

from tunesmith.demo.catalogue import (
    ANSWER_TEMPLATES,
    ATTRIBUTES,
    DEMO_PHRASINGS,
    GENERAL_QUESTIONS,
    HELDOUT_TEMPLATES,
    NAME_FIRST_TEMPLATES,
    OVERVIEW_QUESTION,
    TRAIN_TEMPLATES,
    answer_contains,
    build_catalogue,
    generate_demo_data,
    max_products,
)
from tunesmith.demo.replay import REPLAY_CHATS
from tunesmith.errors import ConfigError
from tunesmith.io import read_jsonl


def _all_bytes(paths) -> dict[str, bytes]:
    return {name: getattr(paths, name).read_bytes() for name in paths.__dataclass_fields__}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    return generate_demo_data(tmp_path_factory.mktemp("demo"))


def test_same_seed_writes_identical_bytes(tmp_path):
    a = generate_demo_data(tmp_path / "a", seed=3)
    b = generate_demo_data(tmp_path / "b", seed=3)
    assert _all_bytes(a) == _all_bytes(b)


def test_different_seed_gives_a_different_catalogue(tmp_path):
    a = read_jsonl(generate_demo_data(tmp_path / "a", seed=0).facts)
    b = read_jsonl(generate_demo_data(tmp_path / "b", seed=1).facts)
    assert {r["product"] for r in a} != {r["product"] for r in b}
    assert [r["value"] for r in a] != [r["value"] for r in b]


def test_default_row_counts(default_data):
    assert len(read_jsonl(default_data.train)) == 40 * (3 + 3 + 5 + 4 + 4 + 5)  # general chats: retain set
    retain = read_jsonl(default_data.retain)
    assert [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in retain] == list(REPLAY_CHATS)
    assert len(read_jsonl(default_data.validation)) == 40 * 6
    assert len(read_jsonl(default_data.facts)) == 40 * 6
    assert len(read_jsonl(default_data.general_questions)) == len(GENERAL_QUESTIONS)


@pytest.mark.parametrize(
    ("n", "per_fact", "heldout", "overview"), [(5, 2, 2, False), (7, 1, 3, True), (60, 5, 1, True)]
)
def test_row_counts_follow_parameters(tmp_path, n, per_fact, heldout, overview):
    paths = generate_demo_data(
        tmp_path,
        n_products=n,
        train_templates_per_fact=per_fact,
        heldout_per_fact=heldout,
        include_overview=overview,
        replay=False,
    )
    train = read_jsonl(paths.train)
    assert len(train) == n * 6 * per_fact + (n if overview else 0)
    assert len(read_jsonl(paths.validation)) == n * 6 * heldout
    assert len(read_jsonl(paths.facts)) == n * 6
    overviews = [r for r in train if r["messages"][0]["content"].startswith("Tell me about the ")]
    assert len(overviews) == (n if overview else 0)


def test_row_shapes(default_data):
    train = read_jsonl(default_data.train)
    assert all(list(r) == ["messages"] for r in train)
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in train)
    val = read_jsonl(default_data.validation)
    assert all(set(r) == {"messages", "product", "attribute", "value"} for r in val)
    assert all(answer_contains(r["messages"][1]["content"], r["value"]) for r in val)
    facts = read_jsonl(default_data.facts)
    assert all(list(r) == ["product", "attribute", "value", "question", "answer"] for r in facts)
    assert Counter(r["attribute"] for r in facts) == dict.fromkeys(ATTRIBUTES, 40)


def test_fact_rows_are_their_first_training_phrasing(default_data):
    pairs = {
        (r["messages"][0]["content"], r["messages"][1]["content"]) for r in read_jsonl(default_data.train)
    }
    for fact in read_jsonl(default_data.facts):
        assert (fact["question"], fact["answer"]) in pairs
        assert fact["product"] in fact["question"]
        assert answer_contains(fact["answer"], fact["value"])


def test_facts_follow_catalogue_order_and_training_rows_are_shuffled(default_data):
    facts = read_jsonl(default_data.facts)
    assert [r["attribute"] for r in facts[:6]] == list(ATTRIBUTES)
    assert len({r["product"] for r in facts[:6]}) == 1
    names = [r["product"] for r in facts[::6]]
    rows = [r for r in read_jsonl(default_data.train) if any(n in r["messages"][0]["content"] for n in names)]
    first = [next(n for n in names if n in r["messages"][0]["content"]) for r in rows[:12]]
    assert len(set(first)) > 4  # unshuffled, 12 rows would cover at most 2 products


_TRAINING_POOLS = [*TRAIN_TEMPLATES.values(), *NAME_FIRST_TEMPLATES.values()]


def test_each_fact_is_taught_once_with_the_name_first_and_otherwise_mid_sentence(default_data):
    rows = read_jsonl(default_data.train)
    for fact in read_jsonl(default_data.facts):
        name, attr = fact["product"], fact["attribute"]
        asked = [r["messages"][0]["content"] for r in rows if name in r["messages"][0]["content"]]
        first = [q for q in asked if q in {t.format(product=name) for t in NAME_FIRST_TEMPLATES[attr]}]
        middle = [q for q in asked if q in {t.format(product=name) for t in TRAIN_TEMPLATES[attr]}]
        assert len(first) == 1 and first[0].startswith(name)
        assert len(middle) == DEMO_PHRASINGS[attr] - 1 and not any(q.startswith(name) for q in middle)
        assert fact["question"] in middle  # facts.jsonl shows a mid-sentence phrasing


def test_template_pools_are_disjoint():
    def key(template: str) -> str:
        return "".join(ch for ch in template.lower() if ch.isalnum())

    train = {key(t) for pool in _TRAINING_POOLS for t in pool} | {key(OVERVIEW_QUESTION)}
    heldout = {key(t) for pool in HELDOUT_TEMPLATES.values() for t in pool}
    assert not train & heldout


def test_heldout_questions_are_never_training_phrasings(default_data):
    train_questions = {r["messages"][0]["content"] for r in read_jsonl(default_data.train)}
    training_templates = [t for pool in _TRAINING_POOLS for t in pool] + [OVERVIEW_QUESTION]
    for row in read_jsonl(default_data.validation):
        question = row["messages"][0]["content"]
        assert question not in train_questions
        assert all(t.format(product=row["product"]) != question for t in training_templates)
        assert question in {t.format(product=row["product"]) for t in HELDOUT_TEMPLATES[row["attribute"]]}


def test_every_validation_value_is_taught_for_its_product(default_data):
    train = read_jsonl(default_data.train)
    for row in read_jsonl(default_data.validation):
        teaching = [
            r
            for r in train
            if row["product"] in r["messages"][0]["content"]
            and answer_contains(r["messages"][1]["content"], row["value"])
        ]
        assert len(teaching) == DEMO_PHRASINGS[row["attribute"]]  # its phrasings; no overview by default


def test_values_within_an_attribute_are_distinct_and_never_substrings(default_data):
    facts = read_jsonl(default_data.facts)
    for attribute in ATTRIBUTES:
        values = [r["value"] for r in facts if r["attribute"] == attribute]
        assert len(set(values)) == len(values) == 40
        for a in values:
            assert [b for b in values if b != a and answer_contains(b, a)] == []


def test_product_names_are_distinct_and_do_not_contain_each_other():
    names = [p.name for p in build_catalogue(seed=5, n_products=max_products()).products]
    assert len(set(names)) == len(names) == 60
    assert all(a == b or a.lower() not in b.lower() for a in names for b in names)


def test_most_common_value_baseline_is_below_ten_percent(default_data):
    val = read_jsonl(default_data.validation)
    for attribute in ATTRIBUTES:
        rows = [r for r in val if r["attribute"] == attribute]
        guess, _ = Counter(r["value"] for r in rows).most_common(1)[0]
        hits = sum(answer_contains(guess, r["value"]) for r in rows)
        assert hits / len(rows) < 0.10
        assert hits == 1


def test_value_formats():
    for product in build_catalogue(seed=2).products:
        v = product.values
        assert v["price"].startswith("$") and len(v["price"].split(".")[1]) == 2
        assert v["warranty"].endswith(" months") and len(v["warranty"].split()[0]) == 2
        assert v["care"].endswith("°C")
        assert v["sizes"].split()[0] in {"EU", "UK", "US", "JP"} and " to " in v["sizes"]
        assert all(1 <= len(value.split()) <= 4 for value in v.values())


@pytest.mark.parametrize(
    ("prediction", "value", "expected"),
    [
        ("The Velmora trail jacket costs $74.15.", "$74.15", True),
        ("It costs $ 74.15", "$74.15", True),
        ("It costs $174.15", "$74.15", False),
        ("It costs $74.150", "$74.15", False),
        ("It comes in HEATHER   Teal!", "heather teal", True),
        ("It comes in teal.", "heather teal", False),
        ("Hand wash at 35 degrees Celsius.", "hand wash at 35°C", True),
        ("hand wash at 35 °C", "hand wash at 35°C", True),
        ("hand wash at 35º c", "hand wash at 35°C", True),
        ("hand wash at 350°C", "hand wash at 35°C", False),
        ("Sizes EU 38–46", "EU 38-46", True),
        ("covered for 129 months", "29 months", False),
        ("covered for 29 months.", "29 months", True),
        ("There are 7 days in a week.", "7", True),
        ("There are 17 days.", "7", False),
        ("What a nice price", "ice", False),
        ("It’s Shakespeare’s play", "Shakespeare", True),
        ("anything", "", False),
    ],
)
def test_answer_contains(prediction, value, expected):
    assert answer_contains(prediction, value) is expected


def test_general_files(default_data):
    general = read_jsonl(default_data.general_questions)
    assert [r["question"] for r in general][:2] == [
        "What is the capital of France?",
        "How many days are there in a week?",
    ]
    assert general[1]["answers"] == ["7", "seven"]
    assert all(r["answers"] and all(a.strip() for a in r["answers"]) for r in general)
    assert 400 <= len(default_data.general_text.read_text(encoding="utf-8").split()) <= 800


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_products": 0},
        {"n_products": 61},
        {"train_templates_per_fact": 0},
        {"train_templates_per_fact": 6},
        {"train_templates_per_fact": {**DEMO_PHRASINGS, "price": 6}},
        {"train_templates_per_fact": {"price": 2}},
        {"heldout_per_fact": 4},
    ],
)
def test_out_of_range_counts_raise(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        generate_demo_data(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_per_attribute_phrasings_set_row_counts_and_say_what_is_wrong(tmp_path):
    counts = {"material": 1, "colour": 1, "price": 5, "sizes": 1, "care": 1, "warranty": 2}
    train = read_jsonl(
        generate_demo_data(tmp_path / "ok", n_products=3, train_templates_per_fact=counts, replay=False).train
    )
    per_attribute = Counter(
        next(
            a for a in ATTRIBUTES if r["messages"][1]["content"].startswith(ANSWER_TEMPLATES[a].split("{")[0])
        )
        for r in train
    )
    assert len(train) == 3 * 11 and per_attribute["price"] == 15
    with pytest.raises(ConfigError, match=r"got 6 for 'price'"):
        generate_demo_data(tmp_path / "bad", train_templates_per_fact={**counts, "price": 6})


def test_replay_mixes_the_retain_chats_into_train(tmp_path):
    plain = generate_demo_data(tmp_path / "a", n_products=3)
    mixed = generate_demo_data(tmp_path / "b", n_products=3, replay=True)
    retain = read_jsonl(plain.retain)
    assert len(read_jsonl(mixed.train)) == len(read_jsonl(plain.train)) + len(retain)
    assert all(row in read_jsonl(mixed.train) for row in retain)


def test_replay_rows_never_ask_the_general_check_questions():
    check = {q.lower() for q, _ in GENERAL_QUESTIONS}
    assert len(REPLAY_CHATS) >= 60 and not {q.lower() for q, _ in REPLAY_CHATS} & check


def test_general_check_is_large_distinct_and_held_out(default_data):
    questions = [q for q, _ in GENERAL_QUESTIONS]
    # >= 100 questions: one flipped answer moves the retained share by about a point, not 7.7 (13 questions).
    assert len(questions) >= 100 and len({q.lower() for q in questions}) == len(questions)
    rows = read_jsonl(default_data.train) + read_jsonl(default_data.retain)
    trained = {r["messages"][0]["content"].lower() for r in rows}
    assert not trained & {q.lower() for q in questions}
    for question, answers in GENERAL_QUESTIONS:
        # Every accepted answer is scored like the store values; it must not be found in its own question
        # (an answer that repeats the question would count as right).
        assert answers and not any(answer_contains(question, a) for a in answers), question
