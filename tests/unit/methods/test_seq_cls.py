"""Sequence-classification heads (``model.head: classification``) on tiny random Llamas: the loss equals the
model's own forward + cross-entropy, exact losses for the first steps against an independent plain-torch
loop, exactly the expected parameters train per method, stock transformers / PEFT reload the result with the
same logits, predict writes one id per line in input order, and bad configs name the key."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.reference import EXACT, reference_losses
from tests.unit.methods.test_feature_extraction import _rows
from tunesmith.config import (
    AdapterMethod,
    FreezeMethod,
    FullMethod,
    LoraMethod,
    QloraMethod,
    RunConfig,
    dump_config,
    load_config,
)
from tunesmith.data.render import class_target_labels
from tunesmith.errors import ConfigError
from tunesmith.infer.batching import collate
from tunesmith.infer.generate import head_logits
from tunesmith.methods import count_parameters, load_options
from tunesmith.methods.seq_cls import load_sequence_classifier, prepare_head
from tunesmith.runs import load_trained, save_trained
from tunesmith.train.batching import collate_packed
from tunesmith.train.loop import TokenData, evaluate_loss, train_loop
from tunesmith.train.losses import sequence_classification_loss

VOCAB, PAD, LABELS = 128, 2, ["fruit", "space", "sea"]


def make_tiny_classifier(seed: int = 0):
    """The conftest tiny Llama's shape as a LlamaForSequenceClassification with 3 labels."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=PAD,
        num_labels=len(LABELS),
    )
    return LlamaForSequenceClassification(config)


def _data(n: int = 24, seed: int = 0) -> TokenData:
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids.append(torch.randint(3, VOCAB, (length,), generator=g).tolist())
        labels.append(class_target_labels(length, i % len(LABELS)))
    return TokenData(ids, labels)


def _train_cfg(lr: float = 1e-2, **extra):
    from tunesmith.config import TrainConfig

    # fp32 pinned: `auto` is bf16 on AVX512-BF16/AMX CPUs, and these tests compare exact fp32 numbers.
    return TrainConfig(batch_size=4, lr=lr, scheduler="constant", log_every=1, precision="fp32", **extra)


def _logged_losses(run_dir) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def test_loss_is_the_models_own_pooled_cross_entropy_padded_and_packed():
    model = make_tiny_classifier().eval()
    data = _data(6)
    batch = collate(data.input_ids, data.labels, PAD)
    y = torch.tensor([row[-1] for row in data.labels])
    with torch.no_grad():
        loss_sum, count = sequence_classification_loss(model, batch)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        packed_sum, packed_count = sequence_classification_loss(
            model, collate_packed(data.input_ids, data.labels, PAD)
        )
    assert int(count) == int(packed_count) == 6
    expected = F.cross_entropy(own, y, reduction="sum")
    assert float(loss_sum) == pytest.approx(float(expected), abs=1e-5)
    assert float(packed_sum) == pytest.approx(float(expected), abs=1e-5)  # packing pools each example's own


def _class_loss_sum(model, ids, labels, pad_id) -> torch.Tensor:
    """Plain torch: the model's own pooled forward + F.cross_entropy, summed (the reference's loss)."""
    batch = collate(ids, labels, pad_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # each row's class id sits at its last real token, its one labelled position
    y = torch.stack([row[row != -100][0] for row in batch["labels"]])
    return F.cross_entropy(logits.float(), y, reduction="sum")


def test_exact_losses_for_the_first_steps(tmp_path):
    model = prepare_head(make_tiny_classifier(), FullMethod())
    train_loop(
        model,
        _data(),
        None,
        _train_cfg(max_steps=3),
        seed=0,
        run_dir=tmp_path,
        pad_id=PAD,
        loss_fn=sequence_classification_loss,
    )
    fresh = prepare_head(make_tiny_classifier(), FullMethod())
    expected = reference_losses(fresh, _data(), _train_cfg(max_steps=3), 0, PAD, 3, loss_sum=_class_loss_sum)
    assert _logged_losses(tmp_path) == pytest.approx(expected, abs=EXACT)


LAYER1 = {
    f"model.layers.1.{m}.weight"
    for m in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "input_layernorm",
        "post_attention_layernorm",
    ]
}
METHODS = {
    "full": (FullMethod(), None),
    "freeze-head": (FreezeMethod(train_last_n_blocks=0, train_norm=False), {"score.weight"}),
    "freeze-last-1": (FreezeMethod(train_last_n_blocks=1), LAYER1 | {"model.norm.weight", "score.weight"}),
    "lora": (LoraMethod(r=4, alpha=8), None),
    "adapter": (
        AdapterMethod(bottleneck=8),
        {
            f"model.layers.{i}.mlp.bottleneck_adapter.{m}.{t}"
            for i in (0, 1)
            for m in ("down", "up")
            for t in ("weight", "bias")
        }
        | {"score.weight"},
    ),
}


@pytest.mark.parametrize("key", list(METHODS))
def test_each_method_trains_exactly_its_parameters_and_lowers_the_loss(tmp_path, key):
    method, expected = METHODS[key]
    model = prepare_head(make_tiny_classifier(), method)
    requires = {n for n, p in model.named_parameters() if p.requires_grad}
    if key == "full":
        assert requires == {n for n, _ in model.named_parameters()}
    elif key == "lora":  # LoRA A/B on every linear of both blocks + the score head trained in full
        assert count_parameters(model)[0] == 2 * 4096 + 64 * len(LABELS)
        head = {n for n in requires if "lora_" not in n}
        assert head == {"base_model.model.score.modules_to_save.default.weight"}
    else:
        assert requires == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = _data()
    start = evaluate_loss(model, data, 8, PAD, "cpu", sequence_classification_loss)
    train_loop(
        model,
        data,
        None,
        # 1e-2 overshoots in 8 steps on the adapter's fresh bottlenecks (loss 1.085 -> 1.180); 3e-3 -> 0.996
        _train_cfg(lr=3e-3 if key == "adapter" else 1e-2, max_steps=8),
        seed=0,
        run_dir=tmp_path,
        pad_id=PAD,
        loss_fn=sequence_classification_loss,
    )
    assert evaluate_loss(model, data, 8, PAD, "cpu", sequence_classification_loss) < start - 1e-3
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == requires, sorted(changed ^ requires)[:4]


def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    """LoRA with dropout on a head: stopped at step 2 (checkpoint), resumed to 4 = straight to 4."""
    method = LoraMethod(r=4, alpha=8, dropout=0.1)
    cfg = _train_cfg(max_steps=4, save_every=2)
    straight = prepare_head(make_tiny_classifier(), method)
    torch.manual_seed(0)
    train_loop(
        straight,
        _data(),
        None,
        cfg,
        seed=0,
        run_dir=tmp_path / "a",
        pad_id=PAD,
        loss_fn=sequence_classification_loss,
    )

    def stop_at_2(step: int, _loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    first = prepare_head(make_tiny_classifier(), method)
    torch.manual_seed(0)
    train_loop(
        first,
        _data(),
        None,
        cfg,
        seed=0,
        run_dir=tmp_path / "b",
        pad_id=PAD,
        loss_fn=sequence_classification_loss,
        on_step=stop_at_2,
    )
    torch.manual_seed(123)  # resume must not depend on the state the process happens to be in
    resumed = prepare_head(make_tiny_classifier(), method)
    train_loop(
        resumed,
        _data(),
        None,
        cfg,
        seed=0,
        run_dir=tmp_path / "b",
        pad_id=PAD,
        resume=True,
        loss_fn=sequence_classification_loss,
    )
    assert _logged_losses(tmp_path / "b") == pytest.approx(_logged_losses(tmp_path / "a"), abs=1e-6)
    assert len(_logged_losses(tmp_path / "a")) == 4


def _head_run(tmp_path, base_dir, tokenizer, method, name: str):
    """A trained head saved as a run directory (config.yaml, data_report.json, model/ or adapter/)."""
    torch.manual_seed(0)
    model = load_sequence_classifier(str(base_dir), label_names=LABELS, pad_id=PAD, **load_options(method))
    model = prepare_head(model, method)
    train_loop(
        model,
        _data(),
        None,
        _train_cfg(max_steps=2),
        seed=0,
        run_dir=tmp_path / "t",
        pad_id=PAD,
        loss_fn=sequence_classification_loss,
    )
    run_dir = tmp_path / name
    run_dir.mkdir()
    cfg = RunConfig.model_validate(
        {"model": {"name": str(base_dir), "head": "classification"}, "method": method.model_dump()}
    )
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "data_report.json").write_text(json.dumps({"label_names": LABELS}))
    saved = save_trained(model, tokenizer, run_dir)
    assert not list(saved.rglob("*.bin"))
    return model.eval(), saved


IDS = torch.tensor([[5, 50, 60, 70, 80], [9, 40, 30, PAD, PAD]])
MASK = (IDS != PAD).long()


@pytest.mark.parametrize(
    "method", [FullMethod(), FreezeMethod(train_last_n_blocks=1)], ids=["full", "freeze"]
)
def test_full_and_freeze_save_a_stock_transformers_classifier(tmp_path, default_tokenizer, method):
    from transformers import AutoModelForSequenceClassification

    base_dir = tmp_path / "base"
    from tests.conftest import make_tiny_llama

    make_tiny_llama(VOCAB).save_pretrained(base_dir, safe_serialization=True)
    default_tokenizer.save_pretrained(base_dir)
    model, saved = _head_run(tmp_path, base_dir, default_tokenizer, method, "run")
    assert saved.name == "model"
    stock = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    assert stock.config.id2label == dict(enumerate(LABELS)) and stock.config.pad_token_id == PAD
    ours, _, _ = load_trained(tmp_path / "run")
    with torch.no_grad():
        trained = model(input_ids=IDS, attention_mask=MASK).logits
        assert torch.allclose(stock(input_ids=IDS, attention_mask=MASK).logits, trained, atol=1e-5)
        assert torch.allclose(ours(input_ids=IDS, attention_mask=MASK).logits, trained, atol=1e-5)


def test_lora_saves_an_adapter_stock_peft_loads_with_its_head(tmp_path, default_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import make_tiny_llama

    base_dir = tmp_path / "base"
    make_tiny_llama(VOCAB).save_pretrained(base_dir, safe_serialization=True)
    default_tokenizer.save_pretrained(base_dir)
    model, saved = _head_run(tmp_path, base_dir, default_tokenizer, LoraMethod(r=4, alpha=8), "run")
    assert saved.name == "adapter"
    torch.manual_seed(99)  # the stock base gets another random score: the adapter's copy must replace it
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3, pad_token_id=PAD)
    stock = PeftModel.from_pretrained(base, saved).eval()
    merged, _, _ = load_trained(tmp_path / "run", merge=True)
    with torch.no_grad():
        trained = model(input_ids=IDS, attention_mask=MASK).logits
        assert torch.allclose(stock(input_ids=IDS, attention_mask=MASK).logits, trained, atol=1e-5)
        assert torch.allclose(merged(input_ids=IDS, attention_mask=MASK).logits, trained, atol=1e-5)


def _tiny_base(tmp_path, tokenizer):
    from tests.conftest import make_tiny_llama

    base_dir = tmp_path / "base"
    make_tiny_llama(VOCAB).save_pretrained(base_dir, safe_serialization=True)
    tokenizer.save_pretrained(base_dir)
    return base_dir


def test_adapter_head_saves_bottlenecks_and_score_and_reloads(tmp_path, default_tokenizer):
    from safetensors.torch import load_file

    base_dir = _tiny_base(tmp_path, default_tokenizer)
    model, saved = _head_run(tmp_path, base_dir, default_tokenizer, AdapterMethod(bottleneck=8), "run")
    assert saved.name == "adapter"
    tensors = load_file(saved / "bottleneck.safetensors")
    assert len(tensors) == 9 and torch.equal(tensors["score.weight"], model.score.weight.detach())
    torch.manual_seed(99)  # the reloaded base draws another random score: the saved one must replace it
    ours, _, _ = load_trained(tmp_path / "run")
    with torch.no_grad():
        trained = model(input_ids=IDS, attention_mask=MASK).logits
        assert torch.allclose(ours(input_ids=IDS, attention_mask=MASK).logits, trained, atol=1e-6)


def test_qlora_head_trains_lora_and_score_on_a_4bit_body_and_reloads(tmp_path, default_tokenizer):
    pytest.importorskip("bitsandbytes")
    base_dir = _tiny_base(tmp_path, default_tokenizer)
    method = QloraMethod(r=4, alpha=8)
    model, saved = _head_run(tmp_path, base_dir, default_tokenizer, method, "run")
    assert saved.name == "adapter"
    body = model.base_model.model
    assert type(body.model.layers[0].mlp.down_proj.base_layer).__name__ == "Linear4bit"
    assert type(body.score.original_module).__name__ == "Linear"  # the head stays full precision
    assert count_parameters(model)[0] == 2 * 4096 + 64 * len(LABELS)  # as LoRA on the fp32 body
    losses = _logged_losses(tmp_path / "t")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    ours, _, _ = load_trained(tmp_path / "run")  # onto a freshly quantized 4-bit body
    with torch.no_grad():
        trained = model(input_ids=IDS, attention_mask=MASK).logits
        assert torch.allclose(ours(input_ids=IDS, attention_mask=MASK).logits, trained, atol=1e-5)


def _config(tmp_path, tiny_model_dir, train_file, *extra: str):
    return load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "name=head",
            f"model.name={tiny_model_dir}",
            "model.head=classification",
            f"data.train={train_file}",
            "data.validation_fraction=0.25",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.precision=fp32",
            "eval.probes=false",
            *extra,
        ],
    )


def test_train_evaluate_predict_end_to_end(tmp_path, tiny_model_dir, capsys):
    from tunesmith import cli
    from tunesmith.api import evaluate, predict, train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(16, 0)))
    summary = train(
        _config(
            tmp_path,
            tiny_model_dir,
            data,
            "method.name=lora",
            "method.r=4",
            "train.class_weights=balanced",
            'data.suffix=" Topic:"',
        )
    )
    weights = summary["head"]["class_weights"]
    assert len(weights) == 3 and all(w > 0 for w in weights)
    val = summary["eval"]["validation"]
    assert set(val) == {"tuned"} and "not evaluated" in summary["head"]["base"]
    assert set(val["tuned"]["per_class_f1"]) == set(LABELS) and len(val["tuned"]["confusion_matrix"]) == 3
    run_dir = tmp_path / "head"
    assert (run_dir / "adapter").is_dir() and (run_dir / "report.html").exists()
    assert evaluate(run_dir)["validation"]["f1_macro"] == pytest.approx(val["tuned"]["f1_macro"])
    texts = ["a red apple", "", "rocket rocket today", "fish in the sea sea"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "labels.txt"
    assert cli.main(["predict", str(run_dir), "--data", str(tmp_path / "in.txt"), "--out", str(out)]) == 0
    ids = out.read_text().splitlines()
    model, tokenizer, _ = load_trained(run_dir)
    from tunesmith.data.render import head_input_ids

    one_by_one = [
        int(head_logits(model, [head_input_ids(t, tokenizer, " Topic:")], PAD).argmax()) for t in texts
    ]
    assert ids == [str(i) for i in one_by_one]  # one id per input line, in input order (blank line too)
    rows = [
        json.loads(x)
        for x in predict(run_dir, tmp_path / "in.txt", tmp_path / "p.jsonl").read_text().splitlines()
    ]
    assert [r["label"] for r in rows] == one_by_one
    assert all(sum(r["probs"]) == pytest.approx(1.0, abs=1e-4) and len(r["probs"]) == 3 for r in rows)


def test_bias_audit_of_a_head_run_scores_the_tuned_head_alone(tmp_path, tiny_model_dir):
    from tunesmith.api import train
    from tunesmith.evaluate.bias import bias_audit
    from tunesmith.evaluate.runner import head_probs

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(16, 0)))
    train(_config(tmp_path, tiny_model_dir, data, "method.name=full"))
    texts = ["she ate a red apple", "he saw the sea", "his rocket flew", "a fish swims"]
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps({"text": t, "label": "fruit"}) + "\n" for t in texts))
    result = bias_audit(tmp_path / "head", data=audit)
    assert "no trained head" in result["base"] and set(result["categories"]["gender"]) == {"tuned"}
    model, tokenizer, cfg = load_trained(tmp_path / "head")
    swapped = ["he ate a red apple", "she saw the sea", "her rocket flew"]
    before, after = head_probs(model, tokenizer, cfg, texts[:3]), head_probs(model, tokenizer, cfg, swapped)
    flips = (before.argmax(-1) != after.argmax(-1)).float().mean().item()
    assert result["categories"]["gender"]["tuned"]["n_changed"] == 3
    assert result["categories"]["gender"]["tuned"]["flip_rate"] == pytest.approx(flips)


def test_head_run_exports_merged_for_stock_transformers_and_refuses_gguf_and_serving(
    tmp_path, tiny_model_dir, default_tokenizer
):
    from transformers import AutoModelForSequenceClassification

    from tunesmith.api import train
    from tunesmith.data.render import head_input_ids
    from tunesmith.errors import RunError
    from tunesmith.export import export
    from tunesmith.methods.seq_cls import label_names_of
    from tunesmith.serve.models import load_registry

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(16, 0)))
    train(_config(tmp_path, tiny_model_dir, data, "method.name=lora", "method.r=4"))
    run_dir = tmp_path / "head"
    merged = export(run_dir, "merged", tmp_path / "merged")
    stock = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    ids = [head_input_ids(t, default_tokenizer) for t in ["a red apple", "rocket to the moon"]]
    model, _, _ = load_trained(run_dir)
    expected = head_logits(model, ids, PAD)
    assert torch.allclose(head_logits(stock, ids, PAD), expected, atol=1e-5)
    assert [stock.config.id2label[i] for i in range(3)] == label_names_of(run_dir)
    with pytest.raises(ConfigError, match="classification-head run: it exports as merged or adapter"):
        export(run_dir, "gguf", tmp_path / "gguf")
    with pytest.raises(RunError, match="tunesmith predict"):
        load_registry([str(run_dir)])


def test_head_on_non_classification_data_names_the_key(tmp_path, tiny_model_dir):
    from tunesmith.api import train

    chat = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    chat.write_text((json.dumps(row) + "\n") * 4)
    with pytest.raises(ConfigError, match=r"model\.head: classification needs classification data"):
        train(_config(tmp_path, tiny_model_dir, chat))
    with pytest.raises(
        ConfigError, match=r"model\.head: classification trains with method full, freeze, lora"
    ):
        train(_config(tmp_path, tiny_model_dir, chat, "method.name=ia3"))


def test_head_data_is_the_text_alone_with_the_class_at_the_last_token(tmp_path, default_tokenizer):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import prepare_data

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(6, 0)))
    split = prepare_data(
        DataConfig(train=str(data), validation_fraction=0.0, max_length=8),
        default_tokenizer,
        0,
        head="classification",
    ).train
    for ex, ids, labels in zip(split.examples, split.input_ids, split.labels, strict=True):
        assert ids == default_tokenizer(ex.text)["input_ids"][:8]  # truncated ones keep their start
        assert labels == class_target_labels(len(ids), ex.label)


def test_head_suffix_follows_the_text_and_survives_truncation(tmp_path, default_tokenizer):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import prepare_data
    from tunesmith.data.render import head_input_ids

    suffix = "\nEmotion:"
    tail = default_tokenizer(suffix, add_special_tokens=False)["input_ids"]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(6, 0)))
    split = prepare_data(
        DataConfig(train=str(data), validation_fraction=0.0, max_length=8, suffix=suffix),
        default_tokenizer,
        0,
        head="classification",
    ).train
    for ex, ids, labels in zip(split.examples, split.input_ids, split.labels, strict=True):
        text_ids = default_tokenizer(ex.text)["input_ids"]
        assert ids == text_ids[: 8 - len(tail)] + tail  # the text is cut, never the suffix the head reads
        assert labels == class_target_labels(len(ids), ex.label)
    assert head_input_ids("joy", default_tokenizer, suffix) == default_tokenizer("joy" + suffix)["input_ids"]


def test_suffix_on_an_lm_head_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.suffix applies to model\.head: classification and method"):
        load_config(None, ["data.suffix=x"])


def test_label_words_init_makes_the_head_the_zero_shot_verbaliser(tiny_model_dir, default_tokenizer):
    from transformers import AutoModelForCausalLM

    from tunesmith.methods.seq_cls import init_head_from_label_words, load_sequence_classifier

    labels = ["fruit", "space", "sea"]
    head = load_sequence_classifier(str(tiny_model_dir), label_names=labels, pad_id=PAD).eval()
    init_head_from_label_words(head, default_tokenizer, labels)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    words = [default_tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in labels]
    ids = torch.tensor([default_tokenizer("a red apple")["input_ids"]])
    with torch.no_grad():
        expected = lm(input_ids=ids).logits[0, -1, words]
        assert torch.allclose(head(input_ids=ids).logits[0], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="share a first token"):
        init_head_from_label_words(head, default_tokenizer, ["sea", "sea"])
    with pytest.raises(ConfigError, match=r"model\.head_init applies to model\.head: classification"):
        load_config(None, ["model.head_init=label_words"])


def test_init_from_an_lm_run_lends_its_body_and_the_head_starts_new(tmp_path, default_tokenizer):
    from tests.conftest import make_tiny_llama
    from tunesmith.methods.seq_cls import start_model

    base_dir = tmp_path / "base"
    make_tiny_llama(VOCAB).save_pretrained(base_dir, safe_serialization=True)
    default_tokenizer.save_pretrained(base_dir)
    earlier = make_tiny_llama(VOCAB, seed=5)  # other weights than the base: the body must come from here
    lm_run = tmp_path / "lm-run"
    lm_run.mkdir()
    lm_cfg = RunConfig.model_validate({"model": {"name": str(base_dir)}, "method": {"name": "full"}})
    (lm_run / "config.yaml").write_text(dump_config(lm_cfg))
    save_trained(earlier, default_tokenizer, lm_run)
    cfg = RunConfig.model_validate(
        {"model": {"name": str(base_dir), "head": "classification"}, "init_from": str(lm_run)}
    )
    model = start_model(cfg, LABELS, default_tokenizer)
    body, lent = model.model.state_dict(), earlier.model.state_dict()
    assert body.keys() == lent.keys() and all(torch.equal(body[k], lent[k]) for k in body)
    assert model.score.weight.shape == (len(LABELS), 64)

    # head_init: label_words on the lent body: the new head's rows are that body's label-word rows (a
    # stand-in tokenizer maps the label words into this model's 128-token vocabulary).
    class SmallVocab:
        pad_token_id = PAD

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
            return {"input_ids": [{" fruit": 5, " space": 6, " sea": 7}[text]]}

    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"head_init": "label_words"})})
    expected = earlier.get_input_embeddings().weight[[5, 6, 7]]
    assert torch.equal(start_model(cfg, LABELS, SmallVocab()).score.weight, expected)


def test_balanced_class_weights_follow_the_training_counts():
    from tunesmith.pipelines.head import class_weights

    rows = [class_target_labels(3, c) for c in (0, 0, 0, 1)]  # class 2 never appears
    assert class_weights(rows, 3, "none") is None
    assert class_weights(rows, 3, "balanced").tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_weighted_loss_is_torchs_weighted_cross_entropy_sum():
    model = make_tiny_classifier().eval()
    data = _data(6)
    batch = collate(data.input_ids, data.labels, PAD)
    y = torch.tensor([row[-1] for row in data.labels])
    weight = torch.tensor([0.5, 2.0, 1.0])
    with torch.no_grad():
        loss_sum, count = sequence_classification_loss(model, batch, class_weights=weight)
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert int(count) == 6  # the mean stays per example: weights with mean 1 keep the loss scale
    expected = F.cross_entropy(own, y, weight=weight, reduction="sum")
    assert float(loss_sum) == pytest.approx(float(expected), abs=1e-5)
    assert float(expected) != pytest.approx(float(F.cross_entropy(own, y, reduction="sum")), abs=1e-3)


def test_class_weights_on_an_lm_head_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.class_weights applies to model\.head: classification"):
        load_config(None, ["train.class_weights=balanced"])


def test_keep_best_by_macro_f1_evaluates_the_restored_weights(tmp_path, tiny_model_dir):
    from tunesmith.api import train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(24, 0)))
    extra = ("train.max_steps=6", "train.eval_every=1", "train.best_metric=macro_f1", "train.keep_best=true")
    summary = train(_config(tmp_path, tiny_model_dir, data, "method.name=full", "train.lr=0.05", *extra))
    rows = [json.loads(x) for x in (tmp_path / "head" / "metrics.jsonl").read_text().splitlines()]
    f1s = {r["step"]: r["val_macro_f1"] for r in rows if "val_macro_f1" in r}
    best = summary["best"]
    assert best["metric"] == "macro_f1" and best["value"] == max(f1s.values()) == f1s[best["step"]]
    assert summary["train"]["restored_best"] and best["step"] < 6  # lr 0.05 collapses the head after step 1
    # The run's reported validation score is the kept weights' score, measured afresh after saving.
    assert summary["eval"]["validation"]["tuned"]["f1_macro"] == pytest.approx(best["value"])


def test_best_metric_on_an_lm_head_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.best_metric: macro_f1 needs model\.head: classification"):
        load_config(None, ["train.best_metric=macro_f1"])
