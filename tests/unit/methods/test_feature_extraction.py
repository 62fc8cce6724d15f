"""feature_extraction on a tiny model: pooled features (exact on known inputs), the disk cache, the
pickle-free classifier (same probabilities as scikit-learn), and train -> evaluate -> predict as a run."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_llama
from tunesmith.api import evaluate, predict, train
from tunesmith.config import FeatureExtractionMethod, load_config
from tunesmith.errors import ConfigError
from tunesmith.methods.features import LinearStack, extract_features, fit_classifier

WORDS = ["apple", "rocket", "ocean"]
FILLER = ["the", "a", "very", "small", "big", "red", "blue", "today", "we", "saw"]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 3
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + [WORDS[label]] * 2
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["fruit", "space", "sea"][label]})
    return rows


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, n, seed in (("train", 60, 0), ("validation", 15, 1)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in _rows(n, seed)))
    return paths


def test_layer0_mean_pooling_is_the_mean_token_embedding(default_tokenizer):
    model = make_tiny_llama(len(default_tokenizer)).eval()
    texts = ["hello there friend", "hi"]
    feats = extract_features(
        model, default_tokenizer, texts, layer=0, pooling="mean", batch_size=2, max_length=64
    )
    emb = model.get_input_embeddings().weight
    for text, row in zip(texts, feats, strict=True):
        ids = default_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert torch.allclose(row, emb[ids].mean(0), atol=1e-6)
    last = extract_features(
        model, default_tokenizer, texts, layer=0, pooling="last", batch_size=2, max_length=64
    )
    ids = default_tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert torch.allclose(last[0], emb[ids[-1]], atol=1e-6)  # right padding does not shift the last token
    long_text, suffix = "hello there friend " * 10, " Topic:"
    tail = default_tokenizer(suffix, add_special_tokens=False)["input_ids"]
    kept = default_tokenizer(long_text, add_special_tokens=False)["input_ids"][: 8 - len(tail)] + tail
    suffixed = extract_features(
        model, default_tokenizer, [long_text], 0, "mean", batch_size=1, max_length=8, suffix=suffix
    )
    assert torch.allclose(suffixed[0], emb[kept].mean(0), atol=1e-6)  # the text is cut, never the suffix


@pytest.mark.parametrize("classifier", ["logistic_regression", "mlp"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_saved_classifier_matches_sklearn(tmp_path, classifier, n_classes):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 8)) * 3 + 1
    y = np.arange(90) % n_classes
    x[:, 0] += y * 2.0
    method = FeatureExtractionMethod(classifier=classifier, hidden_sizes=[16], max_iter=300)
    stack, est = fit_classifier(x, y, method, seed=0)
    stack.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.json", "classifier.safetensors"]
    again = LinearStack.load(tmp_path)
    x_scaled = (x - stack.mean) / stack.scale
    np.testing.assert_allclose(again.predict_proba(x, n_classes), est.predict_proba(x_scaled), atol=1e-9)
    # A label id never seen in training gets probability 0 and the columns still line up.
    assert again.predict_proba(x, n_classes + 1)[:, n_classes].max() == 0.0


def _cfg(tmp_path, model_dir, files, *extra):
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'runs'}",
            f"model.name={model_dir}",
            f"data.train={files['train']}",
            f"data.validation={files['validation']}",
            "method.name=feature_extraction",
            "method.layer=0",
            *extra,
        ],
    )


def test_train_evaluate_predict(tmp_path, tiny_model_dir, files, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))  # a fresh feature cache
    summary = train(_cfg(tmp_path, tiny_model_dir, files, "name=fe"))
    run_dir = tmp_path / "runs" / "fe"
    val = summary["eval"]["validation"]["tuned"]
    # layer 0 = token embeddings: the class words separate the classes perfectly, even in a random model.
    assert (
        val["accuracy"] == 1.0 and val["f1_macro"] == 1.0 and val["labels"] == ["fruit", "sea", "space"]
    )  # sorted
    assert summary["features"]["cache"] == {"train": "miss", "validation": "miss"}
    assert summary["trainable_params"] == 64 * 3 + 3
    assert (run_dir / "classifier" / "classifier.safetensors").exists() and (run_dir / "report.html").exists()
    assert not [p for p in run_dir.rglob("*") if p.suffix in {".pkl", ".pickle", ".joblib", ".bin", ".pt"}]

    again = train(_cfg(tmp_path, tiny_model_dir, files, "name=fe2"))
    assert again["features"]["cache"] == {"train": "hit", "validation": "hit"}
    assert again["eval"] == summary["eval"]
    other_layer = train(_cfg(tmp_path, tiny_model_dir, files, "name=fe3", "method.pooling=last"))
    assert other_layer["features"]["cache"]["train"] == "miss"  # pooling is part of the cache key
    suffixed = train(
        _cfg(tmp_path, tiny_model_dir, files, "name=fe4", "method.pooling=last", 'data.suffix=" Topic:"')
    )
    # Layer 0 + last pooling reads the suffix's last token for every text: identical rows, majority class.
    assert suffixed["features"]["cache"]["train"] == "miss"
    assert suffixed["eval"]["validation"]["tuned"]["accuracy"] == pytest.approx(1 / 3)

    assert evaluate(run_dir)["validation"]["f1_macro"] == val["f1_macro"]
    texts = tmp_path / "tweets.txt"
    rows = _rows(15, 1)
    texts.write_text("".join(r["text"] + "\n" for r in rows))
    out = predict(run_dir, texts, tmp_path / "labels.txt", fmt="labels")
    assert out.read_text().splitlines() == [str(["fruit", "sea", "space"].index(r["label"])) for r in rows]
    jsonl = predict(run_dir, files["validation"], tmp_path / "pred.jsonl")
    first = json.loads(jsonl.read_text().splitlines()[0])
    assert first["label_name"] == rows[0]["label"] and sum(first["probs"]) == pytest.approx(1.0, abs=1e-5)


def test_generation_data_is_refused(tmp_path, tiny_model_dir):
    chat = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    chat.write_text(json.dumps(row) + "\n")
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            f"model.name={tiny_model_dir}",
            f"data.train={chat}",
            "method.name=feature_extraction",
        ],
    )
    with pytest.raises(ConfigError, match="feature_extraction needs classification data"):
        train(cfg)


def test_middle_layer_runs_only_the_blocks_it_needs(default_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(default_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    calls = []
    for block in model.model.layers:
        block.register_forward_hook(lambda *_: calls.append(1))
    feats = extract_features(
        model, default_tokenizer, ["hello there"], layer=1, pooling="mean", batch_size=1, max_length=16
    )
    assert len(calls) == 2  # blocks 1 and 2 of 4 (the returned last state has the final norm applied)
    ids = torch.tensor([default_tokenizer("hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        full = model.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[1]
    assert len(model.model.layers) == 4 and torch.allclose(feats[0], full[0].mean(0), atol=1e-5)
